"""``unionai-sandbox mcp``: a Model Context Protocol server over one live sandbox session.

An agent host (Claude Desktop, Cursor, the OpenAI Agents SDK...) starts the server and calls
its tools; the sandbox session behind them opens at the first call and closes when the
client goes (one session per server on stdio, one per MCP session over HTTP). The
operator's command-line flags are the ceiling: a tool call may narrow a run (a shorter
timeout, a blocked network, part of the allow-list) but never widen it.

Modules, one job each: :mod:`.cli` (the command line), :mod:`.ceiling` (what the operator
allows, and narrowing a call within it), :mod:`.schema` (the tools as a model sees them, and
their argument checks), :mod:`.slot` (the lazily opened session), :mod:`.runs` (one
command, streamed, trimmed and reported), :mod:`.output` (trimming for a model's context),
:mod:`.tools` (the tools' bodies), :mod:`.server` (the MCP wiring), :mod:`.stdio` and
:mod:`.http` (the transports). Only :mod:`.server`, :mod:`.stdio` and :mod:`.http` import
the ``mcp`` SDK, and nothing outside this package imports them: ``unionai-sandbox run``
never loads it.
"""
