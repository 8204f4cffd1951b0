# An app image: the host image plus your code and your requirements. Built with your source
# folder (APP_SOURCE) as the context, so exactly that folder is sent, filtered by its own
# .dockerignore if it has one. `make images` builds it:
#   docker build -f deploy/tornado/app.Dockerfile --build-arg APP_REQUIREMENTS=requirements.txt APP_SOURCE
ARG HOST_IMAGE=flaskstack/host:local
ARG WHEELS_IMAGE=flaskstack/wheels:local
FROM ${WHEELS_IMAGE} AS wheels

# ---- build: your requirements into the host's virtualenv, from the wheelhouse only ------------
FROM ${HOST_IMAGE} AS build
USER root
# Relative to APP_SOURCE. A file with hashes (a lock) is installed in pip's hash-checking mode.
ARG APP_REQUIREMENTS=requirements.txt
COPY ${APP_REQUIREMENTS} /tmp/requirements.txt
COPY --from=wheels /wheels/ /tmp/wheelhouse/
# pip comes back for this step only. A requirement published only as a source distribution is
# built into a wheel here, by the image's own Python, after pip checked it against the lock.
RUN python3 -m ensurepip --default-pip >/dev/null \
 && python3 -m pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse \
        -r /tmp/requirements.txt \
 && python3 -m pip uninstall -y pip

# ---- runtime ---------------------------------------------------------------------------------
FROM ${HOST_IMAGE}
COPY --from=build /opt/venv /opt/venv
COPY . /srv/app/
USER root
RUN python3 -m compileall -q /srv/app
USER 10001:10001
