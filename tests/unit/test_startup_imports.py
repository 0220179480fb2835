"""What starting a server or running an `esper` command imports: torch and torch-geometric
cost seconds of start-up (more on a busy machine), and Urza, Nissa, a heuristic-only Tamiyo
and the CLI's parser need neither until they train, compile or load the learned policy."""

import json
import subprocess
import sys

HEAVY = ("torch", "torch_geometric")


def _imported_after(statements: str) -> list[str]:
    code = (f"import json, sys\n{statements}\n"
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return json.loads(out)


def test_light_servers_start_without_torch():
    assert _imported_after(
        "import esper.urza.service, esper.tamiyo.service, esper.nissa.service, "
        "esper.nissa.worker") == []


def test_every_esper_command_parser_builds_without_torch():
    assert _imported_after("from esper.cli.main import build_parser\nbuild_parser()") == []
