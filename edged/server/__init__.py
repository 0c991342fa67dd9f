"""The server layer: lifecycle, sockets, dispatch and one module per command."""
