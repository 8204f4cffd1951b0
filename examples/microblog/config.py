import os

basedir = os.path.abspath(os.path.dirname(__file__))


class Config:
    SECRET_KEY = os.environ.get("SECRET_KEY") or "you-will-never-guess"
    SQLALCHEMY_DATABASE_URI = os.environ.get("DATABASE_URL", "").replace(
        "postgres://", "postgresql://", 1
    ) or "sqlite:///" + os.path.join(basedir, "app.db")
    LOG_TO_STDOUT = os.environ.get("LOG_TO_STDOUT")
    POSTS_PER_PAGE = int(os.environ.get("POSTS_PER_PAGE") or 25)
    SESSION_COOKIE_SAMESITE = "Lax"
