"""Generation over a built model: the KV-cache engine (``engine.py``) and a multi-turn chat session
(``chat.py``). It knows nothing of files, HTTP or the command line; eval, explain, sweep, the server and
the CLI all generate through it."""
