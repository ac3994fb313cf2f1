#!/usr/bin/env bash
# Deploys the AWS side (docs/getting-started-aws.md): zips the two Lambdas,
# uploads them to BUCKET and creates or updates the CloudFormation stack.
#   deploy/aws/deploy.sh [--attestation-ca FILE [--check-serial]] STACK BUCKET CLAIM_CERTIFICATE_ARN [PARAMETER=VALUE ...]
# --attestation-ca FILE: hardware-attested enrollment (docs/attestation.md),
#   FILE the PEM of the manufacturer CA certificates; the hook's zip then
#   holds tpm_attestation.py, FILE and the cryptography package
#   (deploy/aws/package_hook.py; needs pip and PyPI). --check-serial: the
#   serial must also be the attestation key certificate's. Without the option
#   the stack has attestation off, even if an earlier deployment had it on.
# Needs the AWS CLI v2 with credentials for the account and region.
set -euo pipefail
usage() { sed -n 2,11p "$0" >&2; exit 2; }
ca="" check_serial=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --attestation-ca) [[ $# -ge 2 ]] || usage; ca=$2; shift 2 ;;
    --attestation-ca=*) ca=${1#*=}; shift ;;
    --check-serial) check_serial=1; shift ;;
    --) shift; break ;;
    -*) echo "deploy.sh: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[[ $# -ge 3 ]] || usage
stack=$1 bucket=$2 claim=$3
shift 3
if [[ $check_serial == 1 && -z $ca ]]; then
  echo "deploy.sh: --check-serial needs --attestation-ca FILE" >&2
  exit 2
fi
[[ -z $ca || $ca == /* ]] || ca=$PWD/$ca
cd "$(dirname "$0")/../.."
for parameter in "$@"; do
  case $parameter in
    AttestationCa=* | AttestationCheckSerial=*)
      echo "deploy.sh: set attestation with --attestation-ca FILE and --check-serial, not $parameter" >&2
      exit 2 ;;
  esac
done

deploy/aws/build_template.py --check
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [[ -n $ca ]]; then
  deploy/aws/package_hook.py "$work/provisioning_hook.zip" --attestation-ca "$ca"
  # Where package_hook.py puts the CA file (its CA_NAME) in the Lambda.
  attestation=("AttestationCa=/var/task/attestation-ca.pem" "AttestationCheckSerial=$check_serial")
else
  deploy/aws/package_hook.py "$work/provisioning_hook.zip"
  # Given every time: `cloudformation deploy` would keep an earlier value.
  attestation=("AttestationCa=" "AttestationCheckSerial=0")
fi
(cd cloud && zip -q -j "$work/rotation_report.zip" rotation_report.py)
aws s3 cp --quiet "$work/provisioning_hook.zip" "s3://$bucket/prov-agent/provisioning_hook.zip"
aws s3 cp --quiet "$work/rotation_report.zip" "s3://$bucket/prov-agent/rotation_report.zip"
aws cloudformation deploy \
  --stack-name "$stack" \
  --template-file deploy/aws/prov-agent.template.json \
  --capabilities CAPABILITY_IAM \
  --parameter-overrides "ClaimCertificateArn=$claim" "CodeBucket=$bucket" "${attestation[@]}" "$@"
# A new zip under the same key is not a template change: point the
# functions at the code just uploaded.
for pair in HookFunctionArn:provisioning_hook ReportFunctionArn:rotation_report; do
  arn=$(aws cloudformation describe-stacks --stack-name "$stack" \
    --query "Stacks[0].Outputs[?OutputKey=='${pair%%:*}'].OutputValue" --output text)
  aws lambda update-function-code --function-name "$arn" --s3-bucket "$bucket" \
    --s3-key "prov-agent/${pair#*:}.zip" >/dev/null
done
if [[ -n $ca ]]; then
  echo "stack $stack deployed, attestation on (CA $ca$([[ $check_serial == 1 ]] && echo ', serial checked'))"
else
  echo "stack $stack deployed"
fi
