"""The Server service plugin that starts the line link.

Add it in `server/conf/settings.py`:

    SERVER_SERVICES_PLUGIN_MODULES = SERVER_SERVICES_PLUGIN_MODULES + [
        "worldbridge_evennia.services"]

It runs in the Server process (not the Portal) because the link has to reach game
objects: a bridge `say` is shown in a room, a move is reported from a Character hook,
both in the reactor thread with no AMP hop in between. An `evennia reload` restarts the
Server and with it the link; on the new welcome the game re-reports who is where.
"""

from twisted.python import log

from . import conf as _conf


def _loopback(host):
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


def clashing_web_port(conf, settings):
    """The Evennia web port that `WORLDBRIDGE_LINE` would dial instead of the bridge.

    Evennia's internal web server listens on 127.0.0.1:4005 by default
    (`WEBSERVER_PORTS = [(4001, 4005)]`), the bridge's default line port.
    """
    if conf.line is None or not _loopback(conf.line[0]):
        return None
    if not getattr(settings, "WEBSERVER_ENABLED", True):
        return None
    for ports in getattr(settings, "WEBSERVER_PORTS", []):
        try:
            _proxy, internal = ports
        except (TypeError, ValueError):
            continue
        if internal == conf.line[1]:
            return internal
    return None


def start_plugin_services(server):
    """Called by Evennia, last in the Server's startup."""
    from django.conf import settings

    from .link import BridgeLinkService
    from .world import EvenniaWorld

    conf = _conf.load()
    if conf.line is None:
        log.msg("[worldbridge] WORLDBRIDGE_LINE is off; no line link (talk still works)")
        return
    port = clashing_web_port(conf, settings)
    if port is not None:
        log.msg(
            f"[worldbridge] ERROR: WORLDBRIDGE_LINE {conf.line[0]}:{conf.line[1]} is this "
            f"game's own internal web server port (WEBSERVER_PORTS uses {port}); move one "
            "of them, e.g. WEBSERVER_PORTS = [(4001, 4008)]. No line link started."
        )
        return
    service = BridgeLinkService(EvenniaWorld(conf), conf)
    service.setServiceParent(server)
