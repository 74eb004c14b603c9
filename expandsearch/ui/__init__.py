"""``expandsearch serve-ui``: the agent in the browser — a live episode view and a browser for evaluation traces.

``views`` turns a turn (live or from a trace file) into the one JSON view both pages render; ``live`` plays
episodes and streams their turns as server-sent events; ``traces`` reads ``expandsearch eval``'s output folders;
``app`` is the FastAPI app serving both and the static page (``static/``: plain HTML, CSS and JavaScript, no build
step). docs/ui.md says what each view shows.
"""
