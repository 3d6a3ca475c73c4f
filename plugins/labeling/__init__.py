"""The labeling page for people (preference=human, preference=online preference.labeler=human): the queries and
their label file (store.py), the server and its page (server.py, page.html, page.js, page.css)."""
