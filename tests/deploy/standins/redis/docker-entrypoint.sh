#!/bin/sh
# As the official image's entrypoint: a `redis-server` command runs as the redis user with
# protected mode off (the container's network is the access control), other commands as given.
set -e
if [ "$1" = "redis-server" ]; then
  shift
  exec setpriv --reuid=redis --regid=redis --init-groups redis-server --protected-mode no "$@"
fi
exec "$@"
