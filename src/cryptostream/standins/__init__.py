"""Local stand-ins for exchange servers, for integration tests and offline demos."""
