"""The application shell: the ``grpo-math`` console script and what composes both services (the
demo, a local server process). The services (``trainer``, ``generator_server``) and the library
they share (``shared``) never import it."""
