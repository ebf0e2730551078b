#!/bin/sh
# medallion's test S3 server (`MEDALLION_IMAGES_S3=1 make images`; the deploy test runs it in
# place of MinIO): a one-node Ceph cluster — a monitor, one in-memory OSD
# (memstore: objects are lost when the container stops) and the RADOS
# Gateway, the S3 implementation production Ceph clusters serve — from
# Debian's ceph-mon, ceph-osd and radosgw packages.
#
# It takes MinIO's settings, so compose's `s3` service runs either image:
#   MINIO_ROOT_USER / MINIO_ROOT_PASSWORD  the S3 access key and secret key
#   S3_PORT                                the port inside (default 9000)
# Arguments (MinIO's `server /data`) are ignored. Ready when
# /var/lib/medallion-s3/ready exists (the image's healthcheck).
set -eu
KEY=${MINIO_ROOT_USER:?set MINIO_ROOT_USER (the S3 access key)}
SECRET=${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD (the S3 secret key)}
PORT=${S3_PORT:-9000}
DIR=/var/lib/medallion-s3
log() { echo "s3-ceph: $*" >&2; }

# memstore keeps nothing across a restart: start from an empty cluster.
rm -rf "$DIR"
mkdir -p "$DIR/mon" "$DIR/osd" "$DIR/run" "$DIR/log" "$DIR/rgw"
FSID=$(cat /proc/sys/kernel/random/uuid)
cat > "$DIR/ceph.conf" <<EOF
[global]
fsid = $FSID
mon host = [v2:127.0.0.1:3300]
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc secure
ms client mode = crc secure
ms mon service mode = crc secure
ms mon cluster mode = crc secure
ms service mode = crc secure
ms cluster mode = crc secure
ms bind ipv6 = false
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
[mon.a]
mon data = $DIR/mon
[osd.0]
osd data = $DIR/osd
osd objectstore = memstore
memstore device bytes = ${S3_MEMSTORE_BYTES:-2147483648}
[client.rgw]
rgw frontends = beast endpoint=0.0.0.0:$PORT
rgw data = $DIR/rgw
rgw enable usage log = false
EOF
C="-c $DIR/ceph.conf"
monmaptool --create --clobber --fsid "$FSID" --addv a "[v2:127.0.0.1:3300]" "$DIR/monmap" >/dev/null
ceph-mon $C -i a --mkfs --monmap "$DIR/monmap"
ceph-mon $C -i a
ID=$(ceph $C --connect-timeout 60 osd create)
ceph-osd $C -i "$ID" --mkfs 2>/dev/null
ceph $C osd crush add-bucket localhost host >/dev/null 2>&1
ceph $C osd crush move localhost root=default >/dev/null 2>&1
ceph $C osd crush add "osd.$ID" 1.0 host=localhost >/dev/null 2>&1
ceph-osd $C -i "$ID"
radosgw $C -n client.rgw
log "waiting for the gateway's pools, then creating the S3 user"
i=0
until radosgw-admin $C user create --uid=medallion --display-name=medallion \
        --access-key="$KEY" --secret-key="$SECRET" >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -ge 180 ]; then
    log "the gateway did not come up in 180 s"; tail -n 20 "$DIR"/log/*.log >&2; exit 1
  fi
  sleep 1
done
touch "$DIR/ready"
log "serving S3 on port $PORT"

# In the foreground until stopped or until a daemon dies.
stop() { for n in client.rgw osd.$ID mon.a; do kill "$(cat "$DIR/run/$n.pid")" 2>/dev/null || true; done; exit 0; }
trap stop TERM INT
while :; do
  for n in mon.a "osd.$ID" client.rgw; do
    if ! kill -0 "$(cat "$DIR/run/$n.pid" 2>/dev/null)" 2>/dev/null; then
      log "$n stopped"; tail -n 20 "$DIR/log/$n.log" >&2; exit 1
    fi
  done
  sleep 2 &
  wait $!
done
