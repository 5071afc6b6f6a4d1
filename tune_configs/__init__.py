"""The bundled sweep definitions (`pgnet sweep --config smoke`), shipped as package data."""
