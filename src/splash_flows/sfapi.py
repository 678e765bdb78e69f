"""NERSC's Superfacility API (SFAPI): the one place its client is built from the configuration.

Three parts of Splash Flows talk to SFAPI with the same client -- the HPSS archive tier (``htar`` jobs), the
``sfapi`` analysis backend (reduction jobs) and the credential preflight (``splash-flows check``,
``flight_check_733``). They all read the top-level ``sfapi:`` section (:class:`SfapiCredentialsConfig`: the key
file Iris gave, optionally the client id, the expiry date, and API/token URL overrides), so a renewed key is
changed in one line and the preflight checks exactly the key the jobs use.

The key is checked before ``sfapi-client`` sees it (exists, regular file, mode 600, a 13-character client id,
a private key that parses), so a damaged or mis-permissioned key fails with one line naming the file and what
to do, not with an authlib traceback in the middle of a job.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from splash_flows.errors import CredentialError

if TYPE_CHECKING:
    from sfapi_client import Client

    from splash_flows.config import SfapiCredentialsConfig

#: What to do when the key is missing, refused or about to lapse.
RENEW = ("make a new client in Iris (iris.nersc.gov -> Profile -> Superfacility API Clients), save its key "
         "with mode 600, and set sfapi.key_file and sfapi.expires")


@dataclass(frozen=True)
class SfapiKey:
    """A parsed SFAPI key file: its client id, its kind (``PEM`` or ``JWK``) and the secret text the client
    signs its token requests with."""

    client_id: str
    kind: str
    secret: Any = field(default="", repr=False, compare=False)  # never shown: PEM text or a JWK mapping


def read_key(path: Path, client_id: str | None = None) -> SfapiKey:
    """The SFAPI key in ``path``, checked as sfapi-client checks it (exists, mode 600, a 13-character client id)
    and parsed, so a damaged key fails here and not mid-job. Raises CredentialError naming the file.

    Iris gives a PEM key whose first line is the client id, or a JSON file ``{"client_id", "secret": <JWK>}``;
    a bare PEM key (no id line) is accepted when ``client_id`` is given (``sfapi.client_id``)."""
    try:
        st = path.stat()
    except OSError as err:
        raise CredentialError(f"SFAPI key {path}: cannot read it: {err.strerror or err}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CredentialError(f"SFAPI key {path}: not a regular file")
    if stat.S_IMODE(st.st_mode) != 0o600:
        raise CredentialError(f"SFAPI key {path}: mode is {stat.S_IMODE(st.st_mode):o}, must be 600 "
                              f"(run: chmod 600 {path})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CredentialError(f"SFAPI key {path}: cannot read it: {err}") from None
    from authlib.jose import JsonWebKey

    if path.suffix == ".json":
        try:
            data = json.loads(text)
            found = str(data["client_id"]).strip()
            JsonWebKey.import_key(data["secret"])
            secret: Any = data["secret"]
        except (ValueError, KeyError, TypeError) as err:
            raise CredentialError(f"SFAPI key {path}: not a JSON key with client_id and a JWK secret ({err})") \
                from None
        kind = "JWK"
    else:
        first, _, rest = text.partition("\n")
        found = first.strip()
        if found.startswith("-----BEGIN"):  # a bare PEM key: the id must come from the configuration
            found, rest = client_id or "", text
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            load_pem_private_key(rest.strip().encode(), password=None)
        except (ValueError, TypeError) as err:
            raise CredentialError(f"SFAPI key {path}: the private key after the client id line does not parse "
                                  f"as PEM ({err})") from None
        if len(found) != 13:
            raise CredentialError(f"SFAPI key {path}: no client id (a 13-character id is expected on the first "
                                  "line of a PEM key, or in sfapi.client_id)")
        kind = "PEM"
        secret = text
    if len(found) != 13:
        raise CredentialError(f"SFAPI key {path}: no client id (a 13-character id is expected on the first line "
                              "of a PEM key, as client_id in a JSON key, or in sfapi.client_id)")
    return SfapiKey(found, kind, secret)


def check_key(creds: SfapiCredentialsConfig) -> SfapiKey:
    """The configured key, parsed, and matching ``sfapi.client_id`` when that is set."""
    key = read_key(creds.key_file, creds.client_id)
    if creds.client_id and creds.client_id != key.client_id:
        raise CredentialError(f"SFAPI key {creds.key_file} is for client {key.client_id}, but sfapi.client_id "
                              f"says {creds.client_id}")
    return key


def build_client(creds: SfapiCredentialsConfig) -> Client:
    """The ``sfapi_client.Client`` of the configured credentials (not yet connected: the token is fetched on
    first use). Raises CredentialError when the key file is unusable."""
    from sfapi_client import Client

    key = check_key(creds)
    kwargs: dict[str, Any] = {"client_id": key.client_id, "secret": key.secret}
    if creds.api_base_url:
        kwargs["api_base_url"] = creds.api_base_url.rstrip("/")
    if creds.token_url:
        kwargs["token_url"] = creds.token_url
    return Client(**kwargs)


def token(creds: SfapiCredentialsConfig) -> str:
    """Obtain an access token with the key (client credentials + private-key JWT): proves NERSC accepts it."""
    import httpx
    from authlib.integrations.base_client.errors import OAuthError
    from sfapi_client.exceptions import ClientKeyError

    try:
        with build_client(creds) as client:
            value = client.token
    except ClientKeyError as err:
        raise CredentialError(f"SFAPI key {creds.key_file}: {err}") from None
    except OAuthError as err:
        raise CredentialError(f"NERSC refused the SFAPI client: {err.error}: {err.description or ''}".strip()) \
            from None
    except httpx.HTTPError as err:
        raise CredentialError(f"NERSC's token service could not be reached: {type(err).__name__}: {err}") from None
    if not value:
        raise CredentialError("NERSC's token service answered without an access token")
    return str(value)
