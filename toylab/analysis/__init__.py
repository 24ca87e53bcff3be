"""The papers' measurements, as pure functions of saved parameters."""
