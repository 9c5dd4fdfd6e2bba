--[[
run_stub.lua: runs lua/timmy_bridge.lua inside the tes3mp stub, in real time, driven by stdin.

    luajit lua/run_stub.lua [key=value ...]

Each key=value overrides a timmy_bridge config key, as custom/timmy_bridge_config.lua would
(numbers and true/false are converted): role=connect bridgePort=4005 world=morrowind
listenPort=0 token=secret chatPrefix=/ai heartbeatS=2 ...  A value may contain spaces only if
the shell passes it as one argument. The harness itself takes two more:
    log=1            also copy the script's tes3mp.LogMessage lines to stderr
    echo=0           do not answer SendCell with a client cell change

It loads the stub, then the script (like require("custom/timmy_bridge")), fires OnServerInit
and OnServerPostInit, and then loops: deliver client echoes and fire due timers, read stdin,
wait up to 2 ms. One command per line on stdin (words split on spaces; the last argument takes
the rest of the line):

    join <name> [cell...]          a client logs in (default cell "Seyda Neen, Census and Excise Office")
    leave <pid>                    the client disconnects
    chat <pid> <message...>        the player types a chat line (OnPlayerSendMessage)
    cell <pid> <cell...>           the client walks into another cell (OnPlayerCellChange)
    pos <pid> <x> <y> <z>          the client's live position changes (no event)
    journal <pid> <index> <quest>  the client's journal gains an entry (OnPlayerJournal)
    actor <refId> <x> <y> <z> <health> <cell...>   an actor stands in that cell
    region <pid> <region...>       the client's region (for weather)
    weather <currentWeather> <region...>           the stored weather id of a region
    hour <hour>                    the world's game hour
    sync [tag]                     answered {"event":"sync","tag":...} once every earlier line is done
    lua <code...>                  run Lua as another server script would, e.g.
                                   lua return require("custom/timmy_bridge").worldEvent("Balmora", "rain", "Rain.")
    hide <CallName> / show <CallName>   stop / resume printing calls of that name
    quit                           OnServerExit, then exit 0 (EOF on stdin does the same)

Stdout, one JSON object per line, flushed after each:
    {"call":"SetCell","args":[0,"Balmora, Temple"]}    every tes3mp.* call, in order (also
        "Player:QuicksaveToDrive", "WorldInstance:QuicksaveToDrive",
        "logicHandler.RunConsoleCommandOnPlayer", "commandHandler.ProcessCommand")
    {"event":"ready"}  {"event":"joined","pid":0,"name":"Alice"}  {"event":"left","pid":0}
    {"event":"chat","pid":0,"swallowed":true}  {"event":"sync","tag":"x"}  {"event":"exit"}
    {"event":"lua","results":["1"]}   what a `lua` command returned, each value as tostring()
    {"event":"error","message":"..."}   a bad control command (the loop goes on)
    {"fatal":"..."}   the stub aborted (exit 134), like the server on a binding type error
]]

local dir = (arg and arg[0] or ""):match("^(.*)[/\\][^/\\]*$") or "."
local socket = require("socket")
local ffi = require("ffi")

local stub = dofile(dir .. "/tes3mp_stub.lua")
stub.now = socket.gettime
stub.install()

local hidden = {}
local function emit(t)
    io.stdout:write(stub.encode(t), "\n")
    io.stdout:flush()
end
stub.onCall = function(name, args)
    if not hidden[name] then emit({ call = name, args = args }) end
end

-- Command-line config for the script, delivered as custom/timmy_bridge_config.
local scriptConfig = {}
for _, a in ipairs(arg or {}) do
    local k, v = a:match("^([%w_]+)=(.*)$")
    if not k then
        io.stderr:write("run_stub: arguments are key=value, not ", a, "\n")
        os.exit(2)
    end
    if k == "log" then
        stub.printLog = v ~= "0"
    elseif k == "echo" then
        stub.clientEcho = v ~= "0"
    else
        if v == "true" then v = true
        elseif v == "false" then v = false
        elseif tonumber(v) then v = tonumber(v) end
        scriptConfig[k] = v
    end
end
package.preload["custom/timmy_bridge_config"] = function() return scriptConfig end

-- Loaded once, as the server does: other scripts' require() gets the same module table.
package.loaded["custom/timmy_bridge"] = dofile(dir .. "/timmy_bridge.lua")
stub.serverInit()
emit({ event = "ready" })

ffi.cdef([[ ptrdiff_t read(int fd, void *buf, size_t count); ]])
local readBuf = ffi.new("char[4096]")
local stdin = { getfd = function() return 0 end, dirty = function() return false end }
local pending = ""

local function quit()
    stub.serverExit()
    emit({ event = "exit" })
    os.exit(0)
end

local function num(s)
    local v = tonumber(s)
    if v == nil then error("not a number: " .. tostring(s), 0) end
    return v
end

-- Split off `n` leading words; the rest of the line is the last value.
local function words(line, n)
    local out, rest = {}, line
    for _ = 1, n do
        local w, r = rest:match("^(%S+)%s*(.*)$")
        if not w then break end
        out[#out + 1] = w
        rest = r
    end
    if rest ~= "" then out[#out + 1] = rest end
    return out
end

local commands = {}
function commands.join(rest)
    local a = words(rest, 1)
    if not a[1] then error("join <name> [cell]", 0) end
    local pid = stub.join(a[1], a[2])
    emit({ event = "joined", pid = pid, name = a[1] })
end
function commands.leave(rest)
    local pid = num(rest)
    if not stub.leave(pid) then error("no player " .. pid, 0) end
    emit({ event = "left", pid = pid })
end
function commands.chat(rest)
    local a = words(rest, 1)
    local status = stub.chat(num(a[1]), a[2] or "")
    if status == nil then error("no player " .. a[1], 0) end
    emit({ event = "chat", pid = num(a[1]), swallowed = not status.validDefaultHandler })
end
function commands.cell(rest)
    local a = words(rest, 1)
    if not a[2] or not stub.moveTo(num(a[1]), a[2]) then error("cell <pid> <cell>", 0) end
end
function commands.pos(rest)
    local a = words(rest, 3)
    if not stub.setPosition(num(a[1]), num(a[2]), num(a[3]), num(a[4])) then error("no player", 0) end
end
function commands.journal(rest)
    local a = words(rest, 2)
    if not a[3] or not stub.journalUpdate(num(a[1]), a[3], num(a[2])) then
        error("journal <pid> <index> <quest>", 0)
    end
end
function commands.actor(rest)
    local a = words(rest, 5)
    if not a[6] then error("actor <refId> <x> <y> <z> <health> <cell>", 0) end
    stub.addActor(a[6], a[1], num(a[2]), num(a[3]), num(a[4]), num(a[5]))
end
function commands.region(rest)
    local a = words(rest, 1)
    local c = stub.clients[num(a[1])]
    if not c or not a[2] then error("region <pid> <region>", 0) end
    c.region = a[2]
    Players[num(a[1])].data.location.regionName = a[2]
end
function commands.weather(rest)
    local a = words(rest, 1)
    if not a[2] then error("weather <id> <region>", 0) end
    WorldInstance.storedRegions[a[2]] = { currentWeather = num(a[1]) }
end
function commands.hour(rest) WorldInstance.data.time.hour = num(rest) end
function commands.sync(rest) emit({ event = "sync", tag = rest }) end
function commands.hide(rest) hidden[rest] = true end
function commands.show(rest) hidden[rest] = nil end
function commands.lua(rest)
    local fn, err = loadstring(rest, "lua command")
    if not fn then error(err, 0) end
    local res = { pcall(fn) }
    if not res[1] then error(tostring(res[2]), 0) end
    local out = setmetatable({}, stub.ARRAY)
    for i = 2, table.maxn(res) do out[#out + 1] = tostring(res[i]) end
    emit({ event = "lua", results = out })
end
function commands.quit() quit() end

local function runCommand(line)
    line = line:gsub("\r$", "")
    local name, rest = line:match("^%s*(%S+)%s*(.-)%s*$")
    if not name then return end
    local fn = commands[name]
    if fn == nil then
        emit({ event = "error", message = "unknown command " .. name })
        return
    end
    local ok, err = pcall(fn, rest)
    if not ok then emit({ event = "error", message = tostring(err) }) end
end

while true do
    stub.step()
    local readable = socket.select({ stdin }, nil, 0.002)
    if readable[1] then
        local n = tonumber(ffi.C.read(0, readBuf, 4096))
        if n == 0 then quit() end
        if n > 0 then
            pending = pending .. ffi.string(readBuf, n)
            while true do
                local nl = pending:find("\n", 1, true)
                if not nl then break end
                local line = pending:sub(1, nl - 1)
                pending = pending:sub(nl + 1)
                runCommand(line)
                stub.step()
            end
        end
    end
end
