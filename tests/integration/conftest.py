"""The real llama-server fixtures (defined beside the adapter tests) for every module of this folder."""

from tests.integration.test_llamacpp_real import session, start_server, tiny_model  # noqa: F401
