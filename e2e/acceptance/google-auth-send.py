# SPDX-License-Identifier: Apache-2.0
"""Sends one message through the FCM HTTP v1 API with Google's own auth
library for Python (Debian's python3-google-auth), unchanged: it reads the
service-account file, gets an access token from the file's token_uri and
posts to messages:send. Prints the answer as one JSON line:
{"status": HTTP_STATUS, "body": ANSWER}.

usage: python3 google-auth-send.py SERVICE_ACCOUNT_FILE ORIGIN MESSAGE_JSON
  ORIGIN: where messages:send is, e.g. https://push.example.com
  MESSAGE_JSON: FCM v1's message, e.g. {"token": "...", "data": {"k": "v"}}
"""
import json
import sys

from google.auth.transport.requests import AuthorizedSession
from google.oauth2 import service_account

path, origin, message = sys.argv[1:4]
creds = service_account.Credentials.from_service_account_file(
    path, scopes=["https://www.googleapis.com/auth/firebase.messaging"])
session = AuthorizedSession(creds)
resp = session.post(
    f"{origin}/v1/projects/{creds.project_id}/messages:send",
    json={"message": json.loads(message)}, timeout=60)
print(json.dumps({"status": resp.status_code, "body": resp.json()}))
