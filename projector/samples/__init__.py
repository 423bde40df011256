"""Sample noetl executions bundled for `projector demo` and the tests."""
