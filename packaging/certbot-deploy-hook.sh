#!/bin/sh
# certbot deploy hook for kith-relay under systemd (DynamicUser): copies the renewed
# certificate and key into the relay's state directory, owned by the relay's dynamic user, and
# asks the relay to reload them (it would also notice the change by itself). Connections stay.
#
#   install -m 0755 packaging/certbot-deploy-hook.sh /etc/letsencrypt/renewal-hooks/deploy/kith-relay
#   certbot certonly --standalone -d relay.example.org --key-type ecdsa --reuse-key
#
# `--reuse-key` keeps the key across renewals, so the pin devices hold (`key sha256`) never
# changes. In /etc/kith-relay/relay.toml:
#   cert = "/var/lib/kith-relay/tls/fullchain.pem"
#   key = "/var/lib/kith-relay/tls/privkey.pem"
set -eu
domain="${KITH_RELAY_DOMAIN:-}"
live="${RENEWED_LINEAGE:-/etc/letsencrypt/live/$domain}"
state=/var/lib/private/kith-relay
[ -d "$state" ] || state=/var/lib/kith-relay
owner="$(stat -c %u "$state")"
install -d -m 0700 -o "$owner" -g "$owner" "$state/tls"
# Key first, then the certificate: a reload in between sees a certificate that does not fit its
# key and keeps serving the old pair until both are in place.
install -m 0600 -o "$owner" -g "$owner" "$live/privkey.pem" "$state/tls/privkey.pem.new"
install -m 0644 -o "$owner" -g "$owner" "$live/fullchain.pem" "$state/tls/fullchain.pem.new"
mv "$state/tls/privkey.pem.new" "$state/tls/privkey.pem"
mv "$state/tls/fullchain.pem.new" "$state/tls/fullchain.pem"
systemctl reload kith-relay
