#!/bin/sh
# The store's bucket and users, run by the bucket Job with MinIO's root keys (MC_HOST_store): a read-only
# policy for the predictor's key pair, a read-write one (this bucket only) for the pipeline's. The root keys
# stay with MinIO and this Job. Every step may run again (upgrades, Job retries): mb --ignore-existing,
# policy create and user add overwrite, attach treats "already attached" as done.
# Kept identical in manifests/base/store/ and helm/neurovit/files/store/ (a test compares them).
set -eu

for key in "$READER_ACCESS_KEY" "$WRITER_ACCESS_KEY"; do
  if [ "$key" = "$MINIO_ROOT_USER" ]; then
    echo "the reader and writer key pairs must not be MinIO's root user" >&2
    exit 1
  fi
done
if [ "$READER_ACCESS_KEY" = "$WRITER_ACCESS_KEY" ]; then
  echo "the reader and writer key pairs must differ (one would get both policies)" >&2
  exit 1
fi

mc mb --ignore-existing "store/${BUCKET}"

resources="\"arn:aws:s3:::${BUCKET}\",\"arn:aws:s3:::${BUCKET}/*\""
read_actions='"s3:GetBucketLocation","s3:ListBucket","s3:GetObject"'
write_actions="${read_actions},\"s3:PutObject\",\"s3:DeleteObject\",\"s3:ListBucketMultipartUploads\""
write_actions="${write_actions},\"s3:ListMultipartUploadParts\",\"s3:AbortMultipartUpload\""
policy='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":[%s],"Resource":[%s]}]}\n'
# shellcheck disable=SC2059
printf "$policy" "$read_actions" "$resources" > /tmp/neurovit-read.json
# shellcheck disable=SC2059
printf "$policy" "$write_actions" "$resources" > /tmp/neurovit-write.json
mc admin policy create store neurovit-read /tmp/neurovit-read.json
mc admin policy create store neurovit-write /tmp/neurovit-write.json

mc admin user add store "$READER_ACCESS_KEY" "$READER_SECRET_KEY"
mc admin user add store "$WRITER_ACCESS_KEY" "$WRITER_SECRET_KEY"

attach() {
  # mc fails when the policy is already attached (minio/mc#4670): that is the state wanted.
  if ! output=$(mc admin policy attach store "$1" --user "$2" 2>&1); then
    case "$output" in
      *"already in effect"*) ;;
      *)
        echo "$output" >&2
        exit 1
        ;;
    esac
  fi
}
attach neurovit-read "$READER_ACCESS_KEY"
attach neurovit-write "$WRITER_ACCESS_KEY"
echo "bucket ${BUCKET}: read-only (predictor) and read-write (pipeline) users ready"
