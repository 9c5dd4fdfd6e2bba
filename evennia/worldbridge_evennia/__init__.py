"""worldbridge for Evennia 5: `talk` to the bridge's agent and a live line-protocol link.

Modules: `commands` (`talk`, `@worldevent` and their cmdset), `typeclasses` (the Character
mixin that reports moves and says, `GatewayRoom`, `TravelExit`), `services` (the Server
plugin that starts the link), `link` (the Twisted client), `world` (Evennia objects ↔
bridge messages), `protocol` (framing and rendering, pure Python), `chat` and `travel`
(the HTTP calls), `events` (`world_event()`: world events for the bridge and the
federation), `conf` (settings).
"""

__version__ = "0.1.0"
