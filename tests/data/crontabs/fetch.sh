#!/bin/sh
# Re-extracts the crontabs in this folder from Debian's packages (needs apt-get and dpkg; run as root
# or as a user apt-get download works for). The tests never run this: they read the files it wrote.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get download cron cron-daemon-common sysstat php-common e2fsprogs anacron certbot mdadm ntpsec
for deb in *.deb; do dpkg -x "$deb" root; done
mkdir -p "$here/system" "$here/user"
cp root/etc/crontab "$here/system/crontab"
for f in anacron certbot e2scrub_all mdadm ntpsec php sysstat; do cp "root/etc/cron.d/$f" "$here/system/$f"; done
cp root/usr/share/doc/sysstat/examples/crontab "$here/user/sysstat-example"
# crontab(5)'s EXAMPLE CRON FILE: the lines between .nf and .fi, as its roff source has them.
zcat root/usr/share/man/man5/crontab.5.gz | sed -n '/^\.SH EXAMPLE CRON FILE/,/^\.SH SEE ALSO/p' \
    | sed -e '1,/^\.nf$/d' -e '/^\.fi$/,$d' > "$here/user/crontab.5-example"
for deb in *.deb; do dpkg-deb -f "$deb" Package Version | tr '\n' ' '; echo; done > "$here/versions.txt"
