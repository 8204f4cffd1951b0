# The wheelhouse (build/wheelhouse, filled on the host by `deploy/images/build.sh wheels`) as an
# image, so the host and app builds install from it with no network and no copy of it in their
# own build context. Built with build/wheelhouse as the context.
FROM scratch
COPY . /wheels/
