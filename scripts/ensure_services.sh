#!/usr/bin/env bash
# The tests talk to real Redis and PostgreSQL on 127.0.0.1. Redis keeps nothing on disk here, so when none
# answers we start a throwaway one; PostgreSQL we only start through the cluster tools when they exist.
set -euo pipefail
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  echo "no Redis on 127.0.0.1:6379; starting a throwaway redis-server"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break; sleep 0.1; done
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "no PostgreSQL on 127.0.0.1:5432; starting the local cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  else
    echo "no PostgreSQL on 127.0.0.1:5432 and no pg_ctlcluster to start one" >&2
    exit 1
  fi
fi
