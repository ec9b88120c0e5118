#!/bin/sh
# One-shot job (service minio-setup): the buckets, and one MinIO user with a policy per store, so
# each key reaches only its own bucket: the gate's default store and one per team. Safe to re-run
# (`docker compose run --rm minio-setup`), e.g. after rotating a key in .env.
# Shell built-ins and mc only: the mc image has little else.
set -eu

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"

store() {  # store BUCKET ACCESS_KEY SECRET_KEY
    bucket=$1 user=$2 secret=$3
    mc mb --ignore-existing "local/$bucket"
    mc anonymous set none "local/$bucket"
    printf '%s\n' '{"Version": "2012-10-17", "Statement": [' \
        "{\"Effect\": \"Allow\", \"Action\": [\"s3:GetBucketLocation\", \"s3:ListBucket\", \"s3:ListBucketMultipartUploads\"], \"Resource\": [\"arn:aws:s3:::$bucket\"]}," \
        "{\"Effect\": \"Allow\", \"Action\": [\"s3:GetObject\", \"s3:PutObject\", \"s3:DeleteObject\", \"s3:AbortMultipartUpload\", \"s3:ListMultipartUploadParts\"], \"Resource\": [\"arn:aws:s3:::$bucket/*\"]}" \
        ']}' > "/tmp/$bucket-rw.json"
    mc admin policy create local "$bucket-rw" "/tmp/$bucket-rw.json"
    mc admin user add local "$user" "$secret"        # sets the secret again when the user exists
    # `attach` refuses a policy that is already attached (a re-run): then make sure it is.
    if ! mc admin policy attach local "$bucket-rw" --user "$user"; then
        info=$(mc admin user info local "$user")
        case "$info" in
            *"$bucket-rw"*) ;;
            *) echo "could not attach policy $bucket-rw to user $user" >&2; exit 1 ;;
        esac
    fi
    echo "store $bucket: user $user"
}

store mlflow-default "$GATE_DEFAULT_AWS_ACCESS_KEY_ID" "$GATE_DEFAULT_AWS_SECRET_ACCESS_KEY"
store mlflow-vision "$VISION_AWS_ACCESS_KEY_ID" "$VISION_AWS_SECRET_ACCESS_KEY"
store mlflow-nlp "$NLP_AWS_ACCESS_KEY_ID" "$NLP_AWS_SECRET_ACCESS_KEY"
