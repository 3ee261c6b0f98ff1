#!/usr/bin/env bash
# Builds the Debian package with `cargo deb` and checks what it holds: the binary, the unit
# (verified by systemd-analyze), the config as a conffile, the maintainer scripts. With
# PACKAGE_INSTALL=1 (CI's throwaway machine; it changes the system) it also installs the
# package, checks the shipped config as the service's user, upgrades it over an edited config,
# removes it (the config stays) and purges it (the config goes).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --quiet --no-default-features
# The ci profile: the binary the tests already built.
deb=$(cargo deb --profile ci 2>/dev/null | tail -1)
[ -f "$deb" ] || { echo "package: cargo deb made no package ($deb)" >&2; exit 1; }
case $(basename "$deb") in
  portcullis_*_amd64.deb) ;;
  *) echo "package: unexpected name $deb" >&2; exit 1 ;;
esac

fail() { echo "package: $*" >&2; exit 1; }
contents=$(dpkg-deb -c "$deb")
for path in ./usr/bin/portcullis ./etc/portcullis/gateway.toml \
    ./usr/share/doc/portcullis/keycloak.example.toml \
    ./usr/share/doc/portcullis/portcullis.schema.json; do
  grep -q " $path\$" <<<"$contents" || fail "$path is missing"
done
unit=$(grep -o ' \./\(usr/\)\?lib/systemd/system/portcullis\.service$' <<<"$contents" | tr -d ' ') \
  || fail "the systemd unit is missing"
grep -Eq -- '^-rw-r----- (root/root|0/0) .* \./etc/portcullis/gateway\.toml$' <<<"$contents" \
  || fail "the config is not 0640"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
dpkg-deb -e "$deb" "$scratch/control"
grep -qx /etc/portcullis/gateway.toml "$scratch/control/conffiles" || fail "the config is no conffile"
grep -q '^Depends:.*adduser' "$scratch/control/control" || fail "adduser is not a dependency"
grep -q 'adduser --system' "$scratch/control/postinst" || fail "postinst creates no user"

# The files as installed: the config passes the check, the unit verifies.
dpkg-deb -x "$deb" "$scratch/root"
"$scratch/root/usr/bin/portcullis" check -c "$scratch/root/etc/portcullis/gateway.toml" >/dev/null \
  || fail "the shipped config fails the check"
sed "s#/usr/bin/portcullis#$scratch/root/usr/bin/portcullis#g" "$scratch/root/$unit" \
  > "$scratch/portcullis.service"
systemd-analyze verify "$scratch/portcullis.service" || fail "the unit does not verify"
echo "package: $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB) holds the binary, the unit, a conffile config and the docs"

[ "${PACKAGE_INSTALL:-0}" = 1 ] || exit 0
export DEBIAN_FRONTEND=noninteractive
dpkg -i "$deb" >/dev/null
getent passwd portcullis >/dev/null || fail "no portcullis user after install"
[ "$(stat -c '%U:%G %a' /etc/portcullis/gateway.toml)" = "root:portcullis 640" ] \
  || fail "the config is $(stat -c '%U:%G %a' /etc/portcullis/gateway.toml)"
runuser -u portcullis -- portcullis check -c /etc/portcullis/gateway.toml >/dev/null \
  || fail "the service's user cannot check the installed config"
systemd-analyze verify /$unit || fail "the installed unit does not verify"
echo '# edited by the operator' >> /etc/portcullis/gateway.toml
dpkg -i --force-confold "$deb" >/dev/null
grep -q 'edited by the operator' /etc/portcullis/gateway.toml || fail "an upgrade replaced the edited config"
dpkg -r portcullis >/dev/null
[ ! -e /usr/bin/portcullis ] || fail "remove left the binary"
[ -f /etc/portcullis/gateway.toml ] || fail "remove took the operator's config"
dpkg -P portcullis >/dev/null
[ ! -e /etc/portcullis/gateway.toml ] || fail "purge left the config"
echo "package: installed, checked as the portcullis user, upgraded over an edited config, removed (config kept), purged"
