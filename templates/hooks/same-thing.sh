#!/bin/sh
# Pre-provisioning hook for RotationTemplate: allow the registration only
# when parameters.ThingName is the client id of the requesting connection.
# The device policy lets a certificate connect only as its own thing's
# name, so a device can re-register its own thing and no other.
#
# Input (stdin): the emulator's hook request, JSON, e.g.
#   {"claimCertificateId":"..","certificateId":"..","certificatePem":"..",
#    "templateArn":"..","clientId":"gw_1","parameters":{"ThingName":"gw_1"}}
# Output (stdout): {"allowProvisioning": true|false}
#
# POSIX sh, tr and sed only. JSON is read without a parser, safely for this
# purpose: in JSON text a double quote inside a string is always escaped, so
# a quote right after "{" or "," (whitespace aside) starts a key. Splitting
# at "{", "," and "}" therefore puts every key at the start of a line, and a
# line that begins with a quote begins with a key. Both values must be a
# valid thing name (1 to 128 of [A-Za-z0-9:_-]), "clientId" and "ThingName"
# must each occur exactly once as a key (a parameter named clientId makes
# the request ambiguous: refused), and anything else is refused.

deny() {
    printf '%s\n' '{"allowProvisioning": false}'
    exit 0
}

input=$(cat) || deny
lines=$(printf '%s' "$input" | tr ',{}' '\n\n\n' | sed 's/^[[:space:]]*//')

key_count() {
    printf '%s\n' "$lines" | sed -n "s/^\"$1\"[[:space:]]*:.*/x/p" | wc -l
}

value_of() {
    printf '%s\n' "$lines" |
        sed -n "s/^\"$1\"[[:space:]]*:[[:space:]]*\"\([A-Za-z0-9:_-]\{1,128\}\)\"[[:space:]]*\$/\1/p"
}

[ "$(key_count clientId)" -eq 1 ] || deny
[ "$(key_count ThingName)" -eq 1 ] || deny
client_id=$(value_of clientId)
thing_name=$(value_of ThingName)
[ -n "$client_id" ] || deny
[ "$client_id" = "$thing_name" ] || deny
printf '%s\n' '{"allowProvisioning": true}'
