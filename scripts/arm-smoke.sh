#!/usr/bin/env bash
# Boot Debian's own ARM kernel under qemu-system (TCG) with an initramfs of
# busybox-static, the cross-built pv-xconnect and its glibc, and run the
# smoke suite scripts/lib/arm-guest.sh there, on a real ARM kernel.
#
#   scripts/arm-smoke.sh aarch64|armv7
#
# Exit 0 only when the guest printed its summary line with 0 failed and as
# many PASS lines as the summary counts; the console log is kept in
# target/arm-smoke/<arch>/console.log. The kernel and busybox packages are
# downloaded (never installed) into target/arm-smoke/<arch>/debs/, one
# directory per package version, and reused until Debian updates them.
#
# Environment: PVX_ARM_SMP (guest CPUs, default 2), PVX_ARM_TIMEOUT (seconds
# for the whole boot, default 300), PVX_ARM_EXE (an executable already
# built for that target: skips scripts/cross.sh).
set -euo pipefail
shopt -s inherit_errexit   # and inside $(...): a failed unpack stops the run
cd "$(dirname "$0")/.."

case "${1:-}" in
  aarch64)
    triple=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu deb=arm64
    kmeta=linux-image-arm64
    qemu=(qemu-system-aarch64 -M virt -cpu cortex-a53) ;;
  armv7)
    triple=armv7-unknown-linux-gnueabihf gnu=arm-linux-gnueabihf deb=armhf
    kmeta=linux-image-armmp
    qemu=(qemu-system-arm -M virt -cpu cortex-a15) ;;
  *) echo "usage: scripts/arm-smoke.sh aarch64|armv7" >&2; exit 2 ;;
esac
arch=$1
smp=${PVX_ARM_SMP:-2}
limit=${PVX_ARM_TIMEOUT:-300}

scripts/setup.sh --cross
if [ -n "${PVX_ARM_EXE:-}" ]; then
  exe=$PVX_ARM_EXE
else
  scripts/cross.sh "$arch"
  exe=target/cross/$triple/release/pv-xconnect
fi
[ -x "$exe" ] || { echo "arm-smoke: no executable at $exe" >&2; exit 1; }

work=target/arm-smoke/$arch
mkdir -p "$work/debs"

# The package's concrete name and version, as apt would install it today.
# `apt-cache depends` lists the meta package's dependency (the kernel ABI
# of the day, e.g. linux-image-6.1.0-57-arm64); `apt-cache policy` its
# candidate version. Both read the lists `setup.sh --cross` fetched.
candidate() {
  apt-cache policy "$1:$deb" | awk '/Candidate:/ {print $2}'
}
kpkg=$(apt-cache depends "$kmeta:$deb" | awk '/Depends: linux-image-/ {sub(":.*", "", $2); print $2; exit}')
[ -n "$kpkg" ] || { echo "arm-smoke: $kmeta:$deb depends on no linux-image package (apt-get update?)" >&2; exit 1; }

# Unpack PKG at VERSION once into debs/PKG_VERSION; echo the dir.
unpacked() {
  local pkg=$1 ver=$2 dir tmp
  [ -n "$ver" ] && [ "$ver" != "(none)" ] ||
    { echo "arm-smoke: no candidate for $pkg:$deb (apt-get update?)" >&2; return 1; }
  dir=$work/debs/${pkg}_${ver//:/%3a}
  if [ ! -d "$dir" ]; then
    tmp=$(mktemp -d "$work/debs/.get.XXXXXX")
    # apt's sandbox user cannot write to our tree; that warning is noise.
    (cd "$tmp" && apt-get download -q "$pkg:$deb=$ver" 2>&1 | grep -v 'unsandboxed' >&2 || true)
    local debfile
    debfile=$(ls "$tmp"/*.deb 2>/dev/null | head -1)
    [ -n "$debfile" ] || { echo "arm-smoke: apt-get download $pkg:$deb=$ver failed" >&2; rm -rf "$tmp"; return 1; }
    dpkg-deb -x "$debfile" "$tmp/root" || { echo "arm-smoke: dpkg-deb -x $debfile failed" >&2; rm -rf "$tmp"; return 1; }
    mv "$tmp/root" "$dir"
    rm -rf "$tmp"
    # Older versions of the same package go: only today's is reused.
    for old in "$work/debs/${pkg}"_*; do
      [ "$old" = "$dir" ] || rm -rf "$old"
    done
  fi
  echo "$dir"
}
kpkgver=$(candidate "$kpkg")
bbver=$(candidate busybox-static)
kdir=$(unpacked "$kpkg" "$kpkgver")
bbdir=$(unpacked busybox-static "$bbver")
kernel=$(ls "$kdir"/boot/vmlinuz-* | head -1)
kver=${kernel##*/vmlinuz-}

# The initramfs: busybox, our executable at /usr/bin, the target's glibc
# loader and every library the executable needs (NEEDED, transitively).
root=$work/initramfs
rm -rf "$root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib,proc,sys,dev,run,tmp,srv,etc}
cp "$bbdir/bin/busybox" "$root/bin/busybox"
cp "$exe" "$root/usr/bin/pv-xconnect"
cp scripts/lib/arm-guest.sh "$root/arm-guest.sh"
libdir=/lib/$gnu
interp=$("$gnu-readelf" -l "$exe" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
[ -n "$interp" ] || { echo "arm-smoke: $exe has no program interpreter" >&2; exit 1; }
mkdir -p "$root$(dirname "$interp")"
cp -L "$interp" "$root$interp"
todo=("$exe") seen=" "
while [ ${#todo[@]} -gt 0 ]; do
  elf=${todo[0]} todo=("${todo[@]:1}")
  for lib in $("$gnu-readelf" -d "$elf" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    case $seen in *" $lib "*) continue ;; esac
    seen="$seen$lib "
    [ "/lib/$lib" = "$interp" ] && continue
    [ -e "$libdir/$lib" ] || { echo "arm-smoke: $lib (needed by $elf) not in $libdir" >&2; exit 1; }
    mkdir -p "$root$libdir"
    cp -L "$libdir/$lib" "$root$libdir/$lib"
    todo+=("$libdir/$lib")
  done
done
# Nothing the suite uses is a module: namespaces, unix sockets, loopback,
# tmpfs and devtmpfs are built into Debian's arm64 and armmp kernels. Say
# so here rather than fail obscurely in the guest if that ever changes.
for opt in NET_NS UTS_NS PID_NS UNIX TMPFS DEVTMPFS BLK_DEV_INITRD RD_GZIP MEMFD_CREATE SERIAL_AMBA_PL011_CONSOLE; do
  grep -qx "CONFIG_$opt=y" "$kdir/boot/config-$kver" ||
    { echo "arm-smoke: $kver lacks CONFIG_$opt=y, which the smoke needs built in" >&2; exit 1; }
done
cat > "$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
sh /arm-guest.sh
poweroff -f
EOF
chmod +x "$root/init"
initrd=$work/initramfs.cpio.gz
(cd "$root" && find . | cpio -o -H newc -R 0:0 --quiet) | gzip -1 > "$initrd"

log=$work/console.log
echo "arm-smoke: booting $kpkg ($kver, $kpkgver) with busybox-static $bbver, $exe, -smp $smp"
start=$(date +%s.%N)
set +e
timeout --kill-after=10 "$limit" "${qemu[@]}" -m 512 -smp "$smp" -nographic -no-reboot -nic none \
  -kernel "$kernel" -initrd "$initrd" \
  -append "console=ttyAMA0 quiet panic=-1 rdinit=/init" </dev/null 2>&1 |
  tr -d '\r' | tee "$log"
qemu_rc=${PIPESTATUS[0]}
set -e
secs=$(echo "$start $(date +%s.%N)" | awk '{printf "%.1f", $2 - $1}')

summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1 || true)
passes=$(grep -c '^PASS ' "$log" || true)
fails=$(grep -c '^FAIL ' "$log" || true)
if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
  echo "arm-smoke: $arch: the guest did not power off within ${limit} s" >&2
  exit 1
fi
if [ -z "$summary" ]; then
  echo "arm-smoke: $arch: no summary line from the guest (qemu exit $qemu_rc, $secs s); see $log" >&2
  exit 1
fi
read -r np _ nf _ <<<"$summary"
if [ "$nf" != 0 ] || [ "$fails" != 0 ] || [ "$np" != "$passes" ] || [ "$np" = 0 ]; then
  echo "arm-smoke: $arch: FAILED: $summary ($passes PASS and $fails FAIL lines seen); see $log" >&2
  exit 1
fi
echo "arm-smoke: $arch: $summary on $kver in $secs s (boot to power-off)"
