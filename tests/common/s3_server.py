"""A local S3-protocol server for the tests: moto's, on 127.0.0.1:PORT, that checks request
signatures. It creates one IAM user with full access and its key, then prints one line
`READY ACCESS_KEY_ID SECRET_ACCESS_KEY` and serves until its standard input closes. Each line
`bucket NAME` read meanwhile creates that bucket and is answered `ok NAME`.

With a second argument `open`, nothing is checked (any credentials are accepted): moto rejects
the signature of a correctly signed listing whose query holds an encoded '/' (a prefix), so the
tests of archives under a prefix use such a server.

Usage: python3 s3_server.py PORT [open]
"""
import os
import sys

# Requests before this count are not checked; the setup below makes exactly that many
# (create the user, its policy, its key) and everything after must be signed by a known key.
if sys.argv[2:] != ["open"]:
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"

import boto3  # noqa: E402  (moto[server] installs it)
from moto.server import ThreadedMotoServer  # noqa: E402

POLICY = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'


def main():
    port = int(sys.argv[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    iam = boto3.client(
        "iam",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    iam.create_user(UserName="walship")
    iam.put_user_policy(UserName="walship", PolicyName="all", PolicyDocument=POLICY)
    key = iam.create_access_key(UserName="walship")["AccessKey"]
    s3 = boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    print(f"READY {key['AccessKeyId']} {key['SecretAccessKey']}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if len(words) == 2 and words[0] == "bucket":
            s3.create_bucket(Bucket=words[1])
            print(f"ok {words[1]}", flush=True)
    server.stop()


if __name__ == "__main__":
    main()
