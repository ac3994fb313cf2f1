#!/usr/bin/env bash
# Deploys the AWS side (docs/getting-started-aws.md): zips the two Lambdas,
# uploads them to BUCKET and creates or updates the CloudFormation stack.
#   deploy/aws/deploy.sh STACK BUCKET CLAIM_CERTIFICATE_ARN [PARAMETER=VALUE ...]
# Needs the AWS CLI v2 with credentials for the account and region.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ $# -ge 3 ]] || { sed -n 2,5p "$0" >&2; exit 2; }
stack=$1 bucket=$2 claim=$3
shift 3

deploy/aws/build_template.py --check
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd templates/hooks && zip -q -j "$work/provisioning_hook.zip" provisioning_hook.py)
(cd cloud && zip -q -j "$work/rotation_report.zip" rotation_report.py)
aws s3 cp --quiet "$work/provisioning_hook.zip" "s3://$bucket/prov-agent/provisioning_hook.zip"
aws s3 cp --quiet "$work/rotation_report.zip" "s3://$bucket/prov-agent/rotation_report.zip"
aws cloudformation deploy \
  --stack-name "$stack" \
  --template-file deploy/aws/prov-agent.template.json \
  --capabilities CAPABILITY_IAM \
  --parameter-overrides "ClaimCertificateArn=$claim" "CodeBucket=$bucket" "$@"
# A new zip under the same key is not a template change: point the
# functions at the code just uploaded.
for pair in HookFunctionArn:provisioning_hook ReportFunctionArn:rotation_report; do
  arn=$(aws cloudformation describe-stacks --stack-name "$stack" \
    --query "Stacks[0].Outputs[?OutputKey=='${pair%%:*}'].OutputValue" --output text)
  aws lambda update-function-code --function-name "$arn" --s3-bucket "$bucket" \
    --s3-key "prov-agent/${pair#*:}.zip" >/dev/null
done
echo "stack $stack deployed"
