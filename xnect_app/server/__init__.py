"""FastAPI websocket server: browser capture and broadcast of live 3D poses (docs/server.md)."""
from .app import create_app
from .state import ServerConfig

__all__ = ["create_app", "ServerConfig"]
