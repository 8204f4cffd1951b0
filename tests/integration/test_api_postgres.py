"""The API tests of tests/unit, run again against Postgres (the fixtures here pick the backend)."""

from tests.unit.test_auth import *  # noqa: F403
from tests.unit.test_bench import *  # noqa: F403
from tests.unit.test_echo import *  # noqa: F403
from tests.unit.test_errors import *  # noqa: F403
from tests.unit.test_health import *  # noqa: F403
from tests.unit.test_middleware import *  # noqa: F403
from tests.unit.test_migrations import test_upgrade_head_matches_the_models  # noqa: F401
from tests.unit.test_posts import *  # noqa: F403
from tests.unit.test_uploads import *  # noqa: F403
