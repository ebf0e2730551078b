#!/bin/sh
# The compose stack's one-shot `s3-bucket` service (profile s3): create the
# lake's bucket S3_BUCKET on the server at S3_URL with a SigV4-signed
# `PUT /<bucket>` (curl's --aws-sigv4), retrying while the server starts.
# An existing bucket of the same owner is fine (HTTP 409).
set -eu
: "${S3_URL:?}" "${S3_BUCKET:?}" "${AWS_ACCESS_KEY_ID:?set AWS_ACCESS_KEY_ID in docker/.env}" \
  "${AWS_SECRET_ACCESS_KEY:?set AWS_SECRET_ACCESS_KEY in docker/.env}"
i=0
while :; do
  code=$(curl -sS -o /tmp/answer -w '%{http_code}' -X PUT \
    --aws-sigv4 "aws:amz:${AWS_REGION:-us-east-1}:s3" \
    --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
    "$S3_URL/$S3_BUCKET" 2>/dev/null || echo 000)
  case "$code" in
    200|409) echo "s3-bucket: bucket $S3_BUCKET is there (HTTP $code)"; exit 0 ;;
  esac
  i=$((i + 1))
  if [ "$i" -ge 120 ]; then
    echo "s3-bucket: could not create bucket $S3_BUCKET at $S3_URL: HTTP $code" >&2
    cat /tmp/answer >&2 2>/dev/null || true
    exit 1
  fi
  sleep 2
done
