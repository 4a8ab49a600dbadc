"""`monitord demo`: the daemon watching simulated servers through a two-minute story, with no config and no LLM.

servers.py  small simulators of llama.cpp, Ollama, vLLM and KoboldCpp (the routes monitord reads, streaming
            included), each put into a phase: loading, ready, slow, stalled, saturated or dead.
story.py    the script: which server does what, when (scaled by --speed), and the demo's config.
run.py      starts the servers, a webhook receiver that prints each alert, and the daemon on a temporary SQLite
            file; prints the status page URL, the story and the alerts; cleans everything up on Ctrl-C.

Above the daemon in the layering (like cli): nothing in the daemon imports it.
"""
