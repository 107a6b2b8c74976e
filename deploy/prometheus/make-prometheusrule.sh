#!/usr/bin/env bash
# Writes the PrometheusRule (Prometheus Operator) form of switchboard-rules.yml to stdout:
# the same groups, under spec. `deploy/check` fails when the committed copy differs.
set -euo pipefail
cd "$(dirname "$0")"
cat <<'HEAD'
# Generated from switchboard-rules.yml by make-prometheusrule.sh; do not edit by hand.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: switchboard
  labels:
    app.kubernetes.io/name: switchboard
spec:
HEAD
grep -v '^#' switchboard-rules.yml | sed -e '/./,$!d' -e 's/^/  /' -e 's/^  $//'
