-- Example config for timmy_bridge.lua. Copy to server/scripts/custom/timmy_bridge_config.lua
-- and keep only the keys you change; the rest keep their defaults (docs/tes3mp.md).
return {
    role = "connect",         -- "connect" (default): we dial worldbridge's line listener
                              -- "listen": worldbridge dials us ([[line.dial]] addr = "127.0.0.1:7777")
    world = "morrowind",
    listenHost = "127.0.0.1",
    listenPort = 7777,
    bridgeHost = "127.0.0.1", -- numeric addresses only: a host name would block the server
    bridgePort = 4005,
    token = "",               -- listen: the token worldbridge's [[line.dial]] sends; connect: line.token
    chatPrefix = "/timmy ",
}
