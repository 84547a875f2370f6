#!/bin/sh
# A base image made here, for machines that reach a Debian archive and PyPI but no image registry:
# a Debian bookworm rootfs (debootstrap) with python3 and the pinned requirements, committed as IMAGE.
# Usage (root, buildah and debootstrap installed): local_base.sh REQUIREMENTS.txt IMAGE [DEBIAN_MIRROR]
# Then: loopml package MODEL -o deploy --base-image IMAGE && buildah bud --format docker -t NAME deploy
set -eu
requirements=$1
image=$2
mirror=${3:-http://deb.debian.org/debian}
rootfs=${LOOPML_ROOTFS:-/var/tmp/loopml-rootfs/bookworm}
if [ ! -x "$rootfs/usr/bin/python3" ]; then
    debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates,passwd bookworm "$rootfs" "$mirror"
fi
container=$(buildah from scratch)
trap 'buildah rm "$container" >/dev/null 2>&1 || true' EXIT
mount=$(buildah mount "$container")
cp -a "$rootfs"/. "$mount"/
ln -sf python3 "$mount/usr/bin/python"  # python:3.11-slim's name for it, which the Dockerfile uses
rm -f "$mount"/usr/lib/python3*/EXTERNALLY-MANAGED  # the image's python is the app's alone, as in python:3.11-slim
buildah umount "$container" >/dev/null
buildah copy "$container" "$requirements" /tmp/requirements.txt >/dev/null
# chroot isolation: no OCI runtime or cgroups needed (crun refuses a cgroup v1/v2 hybrid host)
run="buildah run --isolation ${BUILDAH_ISOLATION:-chroot} --network host"
# the host's CA bundle (a TLS-inspecting proxy's CA among them) is mounted for pip only, never copied in
ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
wheels=${LOOPML_WHEELS:-/opt/wheels}  # a local wheel folder (torch's CPU wheel) saves a download when there is one
# PIP_RETRIES=0: an index this machine cannot reach (the CPU torch index, when torch comes from $wheels) is
# skipped at once instead of five retries per package
set -- -v "$ca:/run/host-ca.crt:ro" -e PIP_CERT=/run/host-ca.crt -e PIP_RETRIES=0
[ -d "$wheels" ] && set -- "$@" -v "$wheels:/wheels:ro" -e PIP_FIND_LINKS=/wheels
$run "$@" "$container" -- python -m pip install --no-cache-dir -r /tmp/requirements.txt
$run "$container" -- rm -f /tmp/requirements.txt
buildah config --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd python3 "$container"
buildah commit --quiet "$container" "$image"
