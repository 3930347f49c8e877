#!/usr/bin/env bash
# Prints an HS256 token for `pgevents serve --jwt-secret-file SECRET_FILE` (openssl only):
#
#   scripts/gateway-token.sh SECRET_FILE SUBJECT 'TABLES_JSON' ['ROWS_JSON'] [SECONDS]
#   scripts/gateway-token.sh jwt.secret user-42 '["public.orders"]' '{"customer_id": "42"}' 3600
#
# TABLES_JSON: the tables the subscriber may read (globs); ROWS_JSON: optional row grant;
# SECONDS: lifetime (default 3600). The secret file's bytes are the key, as the gateway reads
# them (make one with: head -c 32 /dev/urandom > jwt.secret).
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
secret_file=$1 subject=$2 tables=$3 rows=${4:-} ttl=${5:-3600}
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
grant="\"tables\": $tables"
if [ -n "$rows" ]; then grant="$grant, \"rows\": $rows"; fi
header=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
payload=$(printf '{"sub": "%s", "exp": %d, "pgevents": {%s}}' "$subject" "$(( $(date +%s) + ttl ))" "$grant" | b64url)
key_hex=$(od -An -v -tx1 "$secret_file" | tr -d ' \n')
signature=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$key_hex" -binary | b64url)
printf '%s.%s.%s\n' "$header" "$payload" "$signature"
