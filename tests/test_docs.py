"""The README cannot drift: every config key, provider type, route, command and alert event is documented, and
the signature check it shows receivers really verifies what monitord sends."""

from __future__ import annotations

import re
import time
from pathlib import Path

from monitord.alerts.signing import sign
from monitord.api import make_app
from monitord.cli import COMMANDS
from monitord.model import AlertType
from monitord.providers import ADAPTERS
from tests.plugins.api import World

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_config_key_is_documented() -> None:
    from docs.gen import config_rows

    missing = [key for key, *_ in config_rows() if f"`{key}`" not in README]
    assert not missing, f"config keys missing from the README: {missing}"


def test_every_provider_type_is_documented() -> None:
    missing = [name for name in ADAPTERS if f"`{name}`" not in README]
    assert not missing


async def test_every_route_is_documented(sqlite_store: object) -> None:
    app = make_app(World(store=sqlite_store).ctx)  # type: ignore[arg-type]
    paths = {resource.canonical for resource in app.router.resources()}
    missing = [path for path in paths if path not in README]
    assert not missing, f"routes missing from the README: {missing}"


def test_every_command_and_event_is_documented() -> None:
    assert not [name for name in COMMANDS if f"monitord {name}" not in README]
    assert not [kind.value for kind in AlertType if f"`{kind.value}`" not in README]


def test_the_readme_signature_check_verifies_real_signatures() -> None:
    block = re.search(r"```python\n(import hashlib, hmac, time\n.*?)```", README, re.S)
    assert block, "the receiver's verify() example is gone from the README"
    namespace: dict[str, object] = {}
    exec(block.group(1), namespace)
    verify = namespace["verify"]
    body = b'{"type": "provider.down"}'
    timestamp = str(int(time.time()))
    headers = {"X-Monitord-Timestamp": timestamp, "X-Monitord-Signature": sign("s3cret", timestamp, body)}
    assert verify("s3cret", headers, body)  # type: ignore[operator]
    assert not verify("other", headers, body)  # type: ignore[operator]
    assert not verify("s3cret", headers, body + b" ")  # type: ignore[operator]
    old = str(int(time.time()) - 3600)
    assert not verify("s3cret", {"X-Monitord-Timestamp": old,  # type: ignore[operator]
                                 "X-Monitord-Signature": sign("s3cret", old, body)}, body)
