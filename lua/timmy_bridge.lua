--[[
timmy_bridge.lua: the TES3MP 0.8.1 server side of worldbridge's line protocol.

Install (see docs/tes3mp.md):
  1. copy this file (and optionally timmy_bridge_config.lua) to server/scripts/custom/
  2. add   require("custom/timmy_bridge")   to server/scripts/customScripts.lua
  3. make luasocket loadable (Debian: apt-get install lua-socket; or socket/core.so in server/lib/)

What it owns: one link to worldbridge (by default the script dials the bridge's line port
127.0.0.1:4005, retrying with backoff, so `cargo run --release` and this file are all it
takes; with role "listen" it listens on 127.0.0.1:7777 and the bridge dials in), one poll
timer created in OnServerPostInit, the translation between protocol messages
(docs/line-protocol.md) and tes3mp/CoreScripts calls, and worldEvent() for
other scripts.

Rules it keeps, because the server has one thread and no mercy (reference §4, §6.7, §7):
  * never blocks: every socket has settimeout(0), connect is non-blocking, hosts are numeric;
  * the timer body runs in pcall and the timer is re-armed on every tick;
  * every value read from the socket is type-checked and coerced before any tes3mp.* call,
    because a wrong argument type aborts the real server even inside pcall;
  * partial lines and partial sends are kept; inbound lines and the outbound queue are capped.

The file is self-contained (its own JSON codec) and returns its module table:
require("custom/timmy_bridge").worldEvent(cell, kind, message[, federate]) for other scripts,
and its internals for lua/test_units.lua.
]]

local M = {}

----------------------------------------------------------------------------------------------
-- Configuration
----------------------------------------------------------------------------------------------

-- Edit here, or put `return { role = "listen", ... }` in custom/timmy_bridge_config.lua
-- (that file wins over this table).
local CONFIG = {
}

local DEFAULTS = {
    role = "connect",           -- "connect": we dial the bridge; "listen": the bridge dials us
    world = "morrowind",        -- our world id in hello/welcome and perception
    listenHost = "127.0.0.1",   -- listen role: numeric address to bind
    listenPort = 7777,          -- listen role: port (0 = any free port, logged)
    bridgeHost = "127.0.0.1",   -- connect role: numeric address of the bridge's line listener
    bridgePort = 4005,          -- connect role: port of the bridge's line listener
    token = "",                 -- listen: hello must carry it; connect: sent in our hello
    chatPrefix = "/timmy ",     -- chat lines starting with this go to the agent
    agentName = "Timmy",        -- shown in front of the agent's lines: "[Timmy] ..."
    relayTag = "[Bridge]",      -- shown in front of relayed say/presence/event lines
    pollMs = 50,                -- timer interval
    heartbeatS = 30,            -- idle ping after 2x, drop after 3x without traffic
    maxLineBytes = 65536,       -- longest inbound line (newline excluded)
    maxQueueBytes = 1048576,    -- outbound bytes queued per link before it is dropped
    maxClients = 4,             -- listen role: simultaneous connections
    maxPendingChats = 64,       -- chats waiting for the agent's reply
    chatTimeoutS = 120,         -- a chat with no reply by then is given up
    streamReplies = true,       -- ask for /timmy replies in parts: one chat line per part
    shareJournal = "auto",      -- "auto": follow CoreScripts config.shareJournal; or true/false
    allowConsole = false,       -- allow the `console` action: any console command on a player
                                -- (off: a linked bridge could run anything; turn on knowingly)
    nearbyRadius = 8192,        -- perception: actors within this distance (world units)
    maxNearby = 20,             -- perception: at most this many actors
    maxInventory = 200,         -- perception: at most this many inventory stacks
}

local ROLES = { listen = true, connect = true }

----------------------------------------------------------------------------------------------
-- Logging
----------------------------------------------------------------------------------------------

local LOG = { VERBOSE = 0, INFO = 1, WARN = 2, ERROR = 3 }
if type(enumerations) == "table" and type(enumerations.log) == "table" then
    for k, v in pairs(enumerations.log) do
        if type(v) == "number" then LOG[k] = v end
    end
end

local function log(level, fmt, ...)
    local ok, text = pcall(string.format, fmt, ...)
    if not ok then text = tostring(fmt) end
    text = "[timmy_bridge] " .. text:gsub("%z", "")
    if type(tes3mp) == "table" and type(tes3mp.LogMessage) == "function" then
        tes3mp.LogMessage(level, text)
    else
        print(text)
    end
end

----------------------------------------------------------------------------------------------
-- JSON: a small strict codec. Encoding always yields valid UTF-8 (bad bytes become U+FFFD)
-- and never a raw newline; decoding handles escapes, \u with surrogate pairs, nesting.
----------------------------------------------------------------------------------------------

local json = {}
M.json = json

-- The JSON null inside arrays. In objects a null member is simply absent.
json.null = setmetatable({}, { __tostring = function() return "null" end })

local ARRAY = { __jsontype = "array" }
local OBJECT = { __jsontype = "object" }
--- Mark a table as a JSON array (so an empty one encodes as [] and not {}).
function json.array(t) return setmetatable(t or {}, ARRAY) end
--- Mark a table as a JSON object.
function json.object(t) return setmetatable(t or {}, OBJECT) end

local MAX_DEPTH = 64
local byte, char, sub, find, format = string.byte, string.char, string.sub, string.find, string.format
local floor, huge = math.floor, math.huge

local SHORT_ESCAPES = {
    [0x22] = '\\"', [0x5c] = "\\\\", [0x08] = "\\b", [0x0c] = "\\f",
    [0x0a] = "\\n", [0x0d] = "\\r", [0x09] = "\\t",
}
local REPLACEMENT = "\239\191\189" -- U+FFFD

-- Length of the valid UTF-8 sequence starting at i, or nil.
local function utf8Length(s, i)
    local c = byte(s, i)
    local need, cp
    if c >= 0xC2 and c <= 0xDF then need, cp = 1, c - 0xC0
    elseif c >= 0xE0 and c <= 0xEF then need, cp = 2, c - 0xE0
    elseif c >= 0xF0 and c <= 0xF4 then need, cp = 3, c - 0xF0
    else return nil end
    for k = 1, need do
        local b = byte(s, i + k)
        if b == nil or b < 0x80 or b > 0xBF then return nil end
        cp = cp * 64 + (b - 0x80)
    end
    if (need == 2 and (cp < 0x800 or (cp >= 0xD800 and cp <= 0xDFFF)))
        or (need == 3 and (cp < 0x10000 or cp > 0x10FFFF)) then
        return nil
    end
    return need + 1, cp
end

local function encodeString(s)
    if not find(s, '[%z\1-\31"\\\127-\255]') then return '"' .. s .. '"' end
    local out, n, i, len = {}, 0, 1, #s
    while i <= len do
        local j = find(s, '[%z\1-\31"\\\127-\255]', i)
        if j == nil then
            n = n + 1; out[n] = sub(s, i)
            break
        end
        if j > i then n = n + 1; out[n] = sub(s, i, j - 1) end
        local c = byte(s, j)
        if c < 0x80 then
            n = n + 1; out[n] = SHORT_ESCAPES[c] or format("\\u%04x", c)
            i = j + 1
        else
            local l, cp = utf8Length(s, j)
            n = n + 1
            if l == nil then
                out[n] = REPLACEMENT; i = j + 1
            elseif cp == 0x2028 or cp == 0x2029 then
                out[n] = format("\\u%04x", cp); i = j + l
            else
                out[n] = sub(s, j, j + l - 1); i = j + l
            end
        end
    end
    return '"' .. table.concat(out) .. '"'
end

local function encodeNumber(v)
    if v ~= v or v == huge or v == -huge then return "null" end
    if v == floor(v) and v > -2^53 and v < 2^53 then return format("%d", v) end
    local s = format("%.14g", v)
    if tonumber(s) ~= v then s = format("%.17g", v) end
    return s
end

local encodeValue

local function isArray(t)
    local mt = getmetatable(t)
    if mt == ARRAY then return true end
    if mt == OBJECT then return false end
    local n = 0
    for k in pairs(t) do
        if type(k) ~= "number" or k < 1 or k ~= floor(k) then return false end
        n = n + 1
    end
    return n > 0 and n == #t
end

local KEY_RANK = { type = 1, id = 2 }
local function keyBefore(a, b)
    local ra, rb = KEY_RANK[a] or 3, KEY_RANK[b] or 3
    if ra ~= rb then return ra < rb end
    return tostring(a) < tostring(b)
end

local function encodeTable(t, depth, out)
    if depth > MAX_DEPTH then error("json: nested too deep", 0) end
    if isArray(t) then
        out[#out + 1] = "["
        for i = 1, #t do
            if i > 1 then out[#out + 1] = "," end
            encodeValue(t[i], depth + 1, out)
        end
        out[#out + 1] = "]"
        return
    end
    -- Keys in a stable order ("type" and "id" first, then sorted): the same message always
    -- reads the same on the wire and in logs.
    local keys = {}
    for k in pairs(t) do
        local kt = type(k)
        if kt ~= "string" and kt ~= "number" then error("json: object key of type " .. kt, 0) end
        keys[#keys + 1] = k
    end
    table.sort(keys, keyBefore)
    out[#out + 1] = "{"
    for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = encodeString(type(k) == "number" and encodeNumber(k) or k)
        out[#out + 1] = ":"
        encodeValue(t[k], depth + 1, out)
    end
    out[#out + 1] = "}"
end

encodeValue = function(v, depth, out)
    local t = type(v)
    if v == nil or v == json.null then out[#out + 1] = "null"
    elseif t == "boolean" then out[#out + 1] = v and "true" or "false"
    elseif t == "number" then out[#out + 1] = encodeNumber(v)
    elseif t == "string" then out[#out + 1] = encodeString(v)
    elseif t == "table" then encodeTable(v, depth, out)
    else error("json: cannot encode a " .. t, 0) end
end

--- Encode a Lua value; raises an error for functions, cycles and odd keys.
function json.encode(v)
    local out = {}
    encodeValue(v, 0, out)
    return table.concat(out)
end

local function codepointToUtf8(cp)
    if cp < 0x80 then return char(cp) end
    if cp < 0x800 then return char(0xC0 + floor(cp / 64), 0x80 + cp % 64) end
    if cp < 0x10000 then
        return char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
    end
    return char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64,
        0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
end

local ESCAPE_CHARS = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f",
    n = "\n", r = "\r", t = "\t" }

local decodeValue

local function decodeError(pos, what)
    error({ json = format("%s at byte %d", what, pos) }, 0)
end

local function skipSpace(s, pos)
    return (find(s, "[^ \t\r\n]", pos)) or (#s + 1)
end

local function hex4(s, pos)
    local h = sub(s, pos, pos + 3)
    if not find(h, "^%x%x%x%x$") then decodeError(pos, "bad \\u escape") end
    return tonumber(h, 16)
end

local function decodeString(s, pos)
    -- pos is just after the opening quote
    local out, n = {}, 0
    while true do
        local j = find(s, '[%z\1-\31"\\]', pos)
        if j == nil then decodeError(pos, "unterminated string") end
        if j > pos then n = n + 1; out[n] = sub(s, pos, j - 1) end
        local c = sub(s, j, j)
        if c == '"' then return table.concat(out), j + 1 end
        if c ~= "\\" then decodeError(j, "control character in string") end
        local e = sub(s, j + 1, j + 1)
        if e == "u" then
            local cp = hex4(s, j + 2)
            pos = j + 6
            if cp >= 0xD800 and cp <= 0xDBFF then
                if sub(s, pos, pos + 1) == "\\u" then
                    local lo = hex4(s, pos + 2)
                    if lo >= 0xDC00 and lo <= 0xDFFF then
                        cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
                        pos = pos + 6
                    else
                        cp = 0xFFFD
                    end
                else
                    cp = 0xFFFD
                end
            elseif cp >= 0xDC00 and cp <= 0xDFFF then
                cp = 0xFFFD
            end
            n = n + 1; out[n] = codepointToUtf8(cp)
        elseif ESCAPE_CHARS[e] then
            n = n + 1; out[n] = ESCAPE_CHARS[e]
            pos = j + 2
        else
            decodeError(j, "bad escape")
        end
    end
end

local function decodeNumber(s, pos)
    -- JSON's grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
    local i = pos
    if sub(s, i, i) == "-" then i = i + 1 end
    local c = sub(s, i, i)
    if c == "0" then
        i = i + 1
    elseif find(c, "^[1-9]$") then
        local _, e = find(s, "^%d+", i)
        i = e + 1
    else
        decodeError(pos, "bad number")
    end
    if sub(s, i, i) == "." then
        local a, e = find(s, "^%d+", i + 1)
        if not a then decodeError(i, "bad number") end
        i = e + 1
    end
    c = sub(s, i, i)
    if c == "e" or c == "E" then
        i = i + 1
        c = sub(s, i, i)
        if c == "+" or c == "-" then i = i + 1 end
        local a, e = find(s, "^%d+", i)
        if not a then decodeError(i, "bad number") end
        i = e + 1
    end
    local v = tonumber(sub(s, pos, i - 1))
    if v == nil or v ~= v or v == huge or v == -huge then decodeError(pos, "bad number") end
    return v, i
end

local function decodeArray(s, pos, depth)
    local t, n = json.array(), 0
    pos = skipSpace(s, pos)
    if sub(s, pos, pos) == "]" then return t, pos + 1 end
    while true do
        local v
        v, pos = decodeValue(s, pos, depth + 1)
        n = n + 1
        t[n] = (v == nil) and json.null or v
        pos = skipSpace(s, pos)
        local c = sub(s, pos, pos)
        if c == "]" then return t, pos + 1 end
        if c ~= "," then decodeError(pos, "expected , or ]") end
        pos = pos + 1
    end
end

local function decodeObject(s, pos, depth)
    local t = json.object()
    pos = skipSpace(s, pos)
    if sub(s, pos, pos) == "}" then return t, pos + 1 end
    while true do
        if sub(s, pos, pos) ~= '"' then decodeError(pos, "expected a string key") end
        local k
        k, pos = decodeString(s, pos + 1)
        pos = skipSpace(s, pos)
        if sub(s, pos, pos) ~= ":" then decodeError(pos, "expected :") end
        local v
        v, pos = decodeValue(s, skipSpace(s, pos + 1), depth + 1)
        t[k] = v -- a null member (nil) is left out
        pos = skipSpace(s, pos)
        local c = sub(s, pos, pos)
        if c == "}" then return t, pos + 1 end
        if c ~= "," then decodeError(pos, "expected , or }") end
        pos = skipSpace(s, pos + 1)
    end
end

decodeValue = function(s, pos, depth)
    if depth > MAX_DEPTH then decodeError(pos, "nested too deep") end
    pos = skipSpace(s, pos)
    local c = sub(s, pos, pos)
    if c == "{" then return decodeObject(s, pos + 1, depth) end
    if c == "[" then return decodeArray(s, pos + 1, depth) end
    if c == '"' then return decodeString(s, pos + 1) end
    if c == "-" or find(c, "^%d$") then return decodeNumber(s, pos) end
    if sub(s, pos, pos + 3) == "true" then return true, pos + 4 end
    if sub(s, pos, pos + 4) == "false" then return false, pos + 5 end
    if sub(s, pos, pos + 3) == "null" then return nil, pos + 4 end
    if c == "" then decodeError(pos, "unexpected end") end
    decodeError(pos, "unexpected character")
end

--- Decode one JSON text. Returns the value (json.null for a top-level null) or nil, error.
function json.decode(s)
    if type(s) ~= "string" then return nil, "not a string" end
    local ok, v, pos = pcall(decodeValue, s, 1, 0)
    if not ok then
        if type(v) == "table" and v.json then return nil, v.json end
        return nil, tostring(v)
    end
    pos = skipSpace(s, pos)
    if pos <= #s then return nil, format("trailing characters at byte %d", pos) end
    if v == nil then return json.null end
    return v
end

----------------------------------------------------------------------------------------------
-- Framing: LineBuffer (bytes in, lines out) and OutQueue (lines in, bytes to a socket).
----------------------------------------------------------------------------------------------

--- Splits a byte stream into lines. A line longer than `maxLine` is reported once as
--- (nil, "too_long") and its bytes up to the next newline are dropped (the contract's rule).
local LineBuffer = {}
LineBuffer.__index = LineBuffer
M.LineBuffer = LineBuffer

function LineBuffer.new(maxLine)
    return setmetatable({ buf = "", pos = 1, max = maxLine, discarding = false }, LineBuffer)
end

function LineBuffer:push(data)
    if data == nil or data == "" then return end
    if self.discarding then
        local nl = find(data, "\n", 1, true)
        if nl == nil then return end
        self.discarding = false
        data = sub(data, nl + 1)
    end
    if self.pos > 1 then
        self.buf = sub(self.buf, self.pos)
        self.pos = 1
    end
    self.buf = self.buf .. data
end

--- The next complete line without its "\n" (and trailing "\r"); nil when more bytes are
--- needed; nil, "too_long" when a line went over the cap.
function LineBuffer:pop()
    local buf, pos = self.buf, self.pos
    local nl = find(buf, "\n", pos, true)
    if nl then
        local last = nl - 1
        if last >= pos and byte(buf, last) == 13 then last = last - 1 end
        self.pos = nl + 1
        if last - pos + 1 > self.max then return nil, "too_long" end
        return sub(buf, pos, last)
    end
    -- No newline: over the cap (one byte of slack for a "\r") means the line is too long.
    if #buf - pos + 1 > self.max + 1 then
        self.buf, self.pos, self.discarding = "", 1, true
        return nil, "too_long"
    end
    return nil
end

--- Bytes waiting for a newline.
function LineBuffer:pending()
    return #self.buf - self.pos + 1
end

--- Outbound lines waiting for a non-blocking socket; keeps the unsent tail of a partial send.
local OutQueue = {}
OutQueue.__index = OutQueue
M.OutQueue = OutQueue

function OutQueue.new(maxBytes)
    return setmetatable({ items = {}, head = 1, tail = 0, sent = 0, bytes = 0, max = maxBytes },
        OutQueue)
end

--- Queue bytes; false when that would exceed the cap (nothing is queued then).
function OutQueue:push(s)
    if self.bytes + #s > self.max then return false end
    self.tail = self.tail + 1
    self.items[self.tail] = s
    self.bytes = self.bytes + #s
    return true
end

function OutQueue:empty()
    return self.head > self.tail
end

--- Send as much as the socket takes now. Returns true, or nil and the socket's error
--- ("closed", ...) when the connection is gone.
function OutQueue:flush(sock)
    while self.head <= self.tail do
        local s = self.items[self.head]
        local last, err, partial = sock:send(s, self.sent + 1)
        if last == nil then
            if err == "timeout" then
                if partial and partial > self.sent then
                    self.bytes = self.bytes - (partial - self.sent)
                    self.sent = partial
                end
                return true
            end
            return nil, err
        end
        self.bytes = self.bytes - (last - self.sent)
        if last >= #s then
            self.items[self.head] = nil
            self.head = self.head + 1
            self.sent = 0
        else
            self.sent = last
        end
    end
    return true
end

----------------------------------------------------------------------------------------------
-- Argument checks. Every socket value goes through these before a tes3mp.* call.
----------------------------------------------------------------------------------------------

local ArgError = {}
ArgError.__index = ArgError

--- Abort the current command with a result {ok:false, code, error}.
local function fail(code, fmt, ...)
    error(setmetatable({ code = code, message = format(fmt, ...) }, ArgError), 0)
end

local function isFiniteNumber(v)
    return type(v) == "number" and v == v and v ~= huge and v ~= -huge
end

-- Printable text: a string, at most maxLen bytes, no control characters but "\n" when allowed.
local function checkString(v, name, opts)
    opts = opts or {}
    if v == nil then
        if opts.default ~= nil then return opts.default end
        if opts.optional then return nil end
        fail("bad_args", "%s is required", name)
    end
    if type(v) ~= "string" then fail("bad_args", "%s must be a string, not %s", name, type(v)) end
    if not opts.allowEmpty and not find(v, "%S") then fail("bad_args", "%s must not be empty", name) end
    if #v > (opts.maxLen or 256) then
        fail("bad_args", "%s is longer than %d bytes", name, opts.maxLen or 256)
    end
    if opts.multiline then
        v = v:gsub("[%z\1-\9\11-\31\127]", "")
    elseif find(v, "[%z\1-\31\127]") then
        fail("bad_args", "%s must not contain control characters", name)
    end
    return v
end

local function checkNumber(v, name, opts)
    opts = opts or {}
    if v == nil then
        if opts.default ~= nil then return opts.default end
        if opts.optional then return nil end
        fail("bad_args", "%s is required", name)
    end
    if not isFiniteNumber(v) then fail("bad_args", "%s must be a number, not %s", name, type(v)) end
    if opts.integer and v ~= floor(v) then fail("bad_args", "%s must be an integer", name) end
    if opts.min and v < opts.min then fail("bad_args", "%s must be at least %s", name, opts.min) end
    if opts.max and v > opts.max then fail("bad_args", "%s must be at most %s", name, opts.max) end
    return v
end

local function checkObject(v, name, optional)
    if v == nil and optional then return nil end
    if type(v) ~= "table" or v == json.null or getmetatable(v) == ARRAY then
        fail("bad_args", "%s must be an object", name)
    end
    return v
end

-- Chat text shown in game: no NUL and friends, bounded, cut on a UTF-8 boundary.
local function chatText(s, maxLen)
    s = tostring(s):gsub("[%z\1-\9\11-\31\127]", "")
    maxLen = maxLen or 4000
    if #s > maxLen then
        local cut = maxLen
        while cut > 0 and (byte(s, cut + 1) or 0) >= 0x80 and (byte(s, cut + 1) or 0) < 0xC0 do
            cut = cut - 1
        end
        s = sub(s, 1, cut) .. "..."
    end
    return s
end

----------------------------------------------------------------------------------------------
-- State
----------------------------------------------------------------------------------------------

local cfg = {}                 -- effective configuration
local socketLib = nil          -- luasocket, once loaded
local links = {}               -- open connections, oldest first
local listener = nil           -- listen role: the server socket
local nextListenTry = 0        -- listen role: when to retry a failed bind
local dialer = { state = "idle", backoff = 1, nextAttempt = 0 } -- connect role
local timerId = nil
local nextId = 0
local pendingChats = {}        -- chat id -> { pid, name, expires }
local pendingCount = 0
local rooms = {}               -- pid -> { name, room } as last told to the bridge
local lastTickError = 0


local function now() return socketLib.gettime() end

local function newId(kind)
    nextId = nextId + 1
    return "tm-" .. kind .. "-" .. nextId
end

----------------------------------------------------------------------------------------------
-- Players
----------------------------------------------------------------------------------------------

local function isOnline(pid)
    local p = type(Players) == "table" and Players[pid] or nil
    return type(pid) == "number" and p ~= nil and type(p.IsLoggedIn) == "function" and p:IsLoggedIn()
end

local function playerName(pid)
    local p = Players[pid]
    local name = p and (p.name or p.accountName)
    if type(name) ~= "string" then name = tes3mp.GetName(pid) end
    return type(name) == "string" and name or ("pid" .. pid)
end

-- Logged-in pids, lowest first.
local function onlinePids()
    local pids = {}
    if type(Players) ~= "table" then return pids end
    for pid in pairs(Players) do
        if isOnline(pid) then pids[#pids + 1] = pid end
    end
    table.sort(pids)
    return pids
end

-- The pid of a player by name (exact, then case-insensitive); nil when not online.
local function findPlayer(name)
    local pids = onlinePids()
    for _, pid in ipairs(pids) do
        if playerName(pid) == name then return pid end
    end
    local lower = name:lower()
    for _, pid in ipairs(pids) do
        if playerName(pid):lower() == lower then return pid end
    end
    return nil
end

-- The command's target: `player` names one, else the first logged-in player.
local function targetPlayer(name)
    if name ~= nil then
        name = checkString(name, "player", { maxLen = 64 })
        local pid = findPlayer(name)
        if pid == nil then fail("no_player", "no player named %s is online", name) end
        return pid
    end
    local pid = onlinePids()[1]
    if pid == nil then fail("no_player", "no player is online") end
    return pid
end

local function currentCell(pid)
    local cell = tes3mp.GetCell(pid)
    if type(cell) == "string" and cell ~= "" then return cell end
    local loc = Players[pid] and Players[pid].data and Players[pid].data.location
    if loc and type(loc.cell) == "string" and loc.cell ~= "" then return loc.cell end
    return nil
end

local function sendChat(pid, text)
    tes3mp.SendMessage(pid, chatText(text) .. "\n", false)
end

----------------------------------------------------------------------------------------------
-- Links: one TCP connection each, with its buffers.
----------------------------------------------------------------------------------------------

local handleLine -- defined with the protocol below

local function closeLink(link, why)
    if link.closed then return end
    link.closed = true
    pcall(function() link.sock:close() end)
    for i, l in ipairs(links) do
        if l == link then table.remove(links, i) break end
    end
    log(LOG.INFO, "link %s closed: %s", link.peer, why)
    if link.dialed and not M.stopping then
        dialer.state = "idle"
        dialer.nextAttempt = now() + dialer.backoff
        log(LOG.INFO, "reconnecting to %s:%d in %d s", cfg.bridgeHost, cfg.bridgePort, dialer.backoff)
        dialer.backoff = math.min(dialer.backoff * 2, 30)
    end
end

local function newLink(sock, peer, dialed)
    local link = {
        sock = sock, peer = peer, dialed = dialed,
        inbuf = LineBuffer.new(cfg.maxLineBytes), out = OutQueue.new(cfg.maxQueueBytes),
        -- our token guards what others dial; a link we dialed presents ours in hello instead
        ready = false, authed = dialed or cfg.token == "", lastHeard = now(), pinged = false,
        openedAt = now(), closed = false,
    }
    links[#links + 1] = link
    return link
end

--- Queue one message on a link. Over the queue cap the peer is too slow: drop it.
local function send(link, msg)
    if link.closed then return false end
    local ok, line = pcall(json.encode, msg)
    if not ok then
        log(LOG.ERROR, "cannot encode %s: %s", tostring(msg.type), tostring(line))
        return false
    end
    if #line > cfg.maxLineBytes then
        log(LOG.WARN, "%s message of %d bytes is over the line cap, not sent", tostring(msg.type), #line)
        if msg.id ~= nil and msg.type ~= "error" then
            send(link, { type = "error", id = msg.id, code = "limit_reached",
                error = "the answer is longer than the line cap" })
        end
        return false
    end
    if not link.out:push(line .. "\n") then
        closeLink(link, "slow consumer (outbound queue over " .. cfg.maxQueueBytes .. " bytes)")
        return false
    end
    return true
end

-- Links that said hello/welcome: they get presence, events and perception.
local function readyLinks()
    local out = {}
    for _, l in ipairs(links) do
        if l.ready and not l.closed then out[#out + 1] = l end
    end
    return out
end

local function broadcast(msg)
    local n = 0
    for _, l in ipairs(readyLinks()) do
        if send(l, msg) then n = n + 1 end
    end
    return n
end

-- The link chats go to: the newest ready one (a reconnect replaces a half-open old one).
local function chatLink()
    local ready = readyLinks()
    return ready[#ready]
end

----------------------------------------------------------------------------------------------
-- Perception
----------------------------------------------------------------------------------------------

local WEATHER = { [0] = "clear", "cloudy", "foggy", "overcast", "rain", "thunder", "ash",
    "blight", "snow", "blizzard" }

local function shareJournal()
    if cfg.shareJournal == true or cfg.shareJournal == false then return cfg.shareJournal end
    if type(config) == "table" and config.shareJournal ~= nil then return config.shareJournal == true end
    return true -- CoreScripts' default
end

local function journalTable(pid)
    if shareJournal() then
        if type(WorldInstance) == "table" and type(WorldInstance.data) == "table" then
            WorldInstance.data.journal = WorldInstance.data.journal or {}
            return WorldInstance.data.journal
        end
        return nil
    end
    local data = Players[pid].data
    data.journal = data.journal or {}
    return data.journal
end

local function round(v, step)
    if not isFiniteNumber(v) then return nil end
    return floor(v / step + 0.5) * step
end

local function nearbyActors(pid, cell, px, py, pz)
    local out = json.array()
    if type(LoadedCells) ~= "table" or LoadedCells[cell] == nil then return out end
    local objectData = LoadedCells[cell].data and LoadedCells[cell].data.objectData or {}
    tes3mp.ReadCellActorList(cell)
    local size = tes3mp.GetActorListSize()
    if type(size) ~= "number" then return out end
    for i = 0, size - 1 do
        local refId = tes3mp.GetActorRefId(i)
        local uniqueIndex = tostring(tes3mp.GetActorRefNum(i)) .. "-" .. tostring(tes3mp.GetActorMpNum(i))
        local x, y, z
        if tes3mp.DoesActorHavePosition(i) then
            x, y, z = tes3mp.GetActorPosX(i), tes3mp.GetActorPosY(i), tes3mp.GetActorPosZ(i)
        elseif type(objectData[uniqueIndex]) == "table" and type(objectData[uniqueIndex].location) == "table" then
            local loc = objectData[uniqueIndex].location
            x, y, z = loc.posX, loc.posY, loc.posZ
        end
        if type(refId) == "string" and isFiniteNumber(x) and isFiniteNumber(y) and isFiniteNumber(z) then
            local d = math.sqrt((x - px) ^ 2 + (y - py) ^ 2 + (z - pz) ^ 2)
            if d <= cfg.nearbyRadius then
                local actor = { ref_id = refId, unique_index = uniqueIndex, distance = round(d, 0.1) }
                if tes3mp.DoesActorHaveStatsDynamic(i) then
                    local hp = tes3mp.GetActorHealthCurrent(i)
                    if isFiniteNumber(hp) then
                        actor.health = hp
                        actor.dead = hp <= 0
                    end
                end
                out[#out + 1] = actor
            end
        end
    end
    table.sort(out, function(a, b) return a.distance < b.distance end)
    for i = #out, cfg.maxNearby + 1, -1 do out[i] = nil end
    return out
end

local function weatherOf(pid)
    if type(WorldInstance) ~= "table" or type(WorldInstance.storedRegions) ~= "table" then return nil end
    local region = tes3mp.GetRegion(pid)
    if type(region) ~= "string" or region == "" then
        local loc = Players[pid].data and Players[pid].data.location
        region = loc and loc.regionName
    end
    if type(region) ~= "string" or region == "" then return nil end
    local stored = WorldInstance.storedRegions[region] or WorldInstance.storedRegions[region:lower()]
    if type(stored) ~= "table" or type(stored.currentWeather) ~= "number" then return nil end
    return WEATHER[stored.currentWeather]
end

--- The perception of one player (nil pid: the world only). Fields the server cannot know
--- (actor display names, NPC or creature) are left out.
local function buildPerception(pid, id)
    local p = { type = "perception", id = id, protocol_version = "1.0", world = cfg.world }
    local names = json.array()
    for _, other in ipairs(onlinePids()) do names[#names + 1] = playerName(other) end
    p.players = names
    if type(WorldInstance) == "table" and type(WorldInstance.data) == "table"
        and type(WorldInstance.data.time) == "table" and isFiniteNumber(WorldInstance.data.time.hour) then
        p.game_hour = round(WorldInstance.data.time.hour, 0.01)
    end
    if pid == nil then return p end

    p.player = playerName(pid)
    p.cell = currentCell(pid)
    local x, y, z = tes3mp.GetPosX(pid), tes3mp.GetPosY(pid), tes3mp.GetPosZ(pid)
    p.position = { x = x, y = y, z = z }
    p.rotation = { x = tes3mp.GetRotX(pid), z = tes3mp.GetRotZ(pid) }
    p.stats = {
        health = { current = tes3mp.GetHealthCurrent(pid), base = tes3mp.GetHealthBase(pid) },
        magicka = { current = tes3mp.GetMagickaCurrent(pid), base = tes3mp.GetMagickaBase(pid) },
        fatigue = { current = tes3mp.GetFatigueCurrent(pid), base = tes3mp.GetFatigueBase(pid) },
    }
    p.level = tes3mp.GetLevel(pid)

    local inv = json.array()
    local data = Players[pid].data or {}
    for _, item in pairs(data.inventory or {}) do
        if #inv >= cfg.maxInventory then break end
        if type(item) == "table" and type(item.refId) == "string" and isFiniteNumber(item.count)
            and item.count > 0 then
            inv[#inv + 1] = { ref_id = item.refId, count = item.count }
        end
    end
    p.inventory = inv

    -- Quest progress: the highest index reached per quest, in journal order.
    local journal, at = json.array(), {}
    for _, entry in ipairs(journalTable(pid) or {}) do
        if type(entry) == "table" and type(entry.quest) == "string" and isFiniteNumber(entry.index) then
            local k = at[entry.quest]
            if k == nil then
                journal[#journal + 1] = { quest = entry.quest, index = entry.index }
                at[entry.quest] = #journal
            elseif entry.index > journal[k].index then
                journal[k].index = entry.index
            end
        end
    end
    p.journal = journal

    if p.cell and isFiniteNumber(x) and isFiniteNumber(y) and isFiniteNumber(z) then
        p.nearby = nearbyActors(pid, p.cell, x, y, z)
    end
    p.weather = weatherOf(pid)
    return p
end
M.buildPerception = buildPerception

----------------------------------------------------------------------------------------------
-- Actions (`act`). Each returns the result's data table or raises through fail().
----------------------------------------------------------------------------------------------

local ATTRIBUTES = { "Strength", "Intelligence", "Willpower", "Agility", "Speed", "Endurance",
    "Personality", "Luck" }
local SKILLS = { "Block", "Armorer", "Mediumarmor", "Heavyarmor", "Bluntweapon", "Longblade", "Axe",
    "Spear", "Athletics", "Enchant", "Destruction", "Alteration", "Illusion", "Conjuration",
    "Mysticism", "Restoration", "Alchemy", "Unarmored", "Security", "Sneak", "Acrobatics",
    "Lightarmor", "Shortblade", "Marksman", "Mercantile", "Speechcraft", "Handtohand" }
local function byKey(list)
    local t = {}
    for _, name in ipairs(list) do t[name:lower()] = name end
    return t
end
local ATTRIBUTE_BY_KEY, SKILL_BY_KEY = byKey(ATTRIBUTES), byKey(SKILLS)

local function statKey(name) return (name:lower():gsub("[^%a]", "")) end

local function inventoryEnum(name, fallback)
    if type(enumerations) == "table" and type(enumerations.inventory) == "table"
        and type(enumerations.inventory[name]) == "number" then
        return enumerations.inventory[name]
    end
    return fallback
end

-- Places CoreScripts knows without a position: its respawn point, e.g. "Balmora, Temple".
local function knownPlace(cell)
    local r = type(config) == "table" and config.defaultRespawn or nil
    if type(r) == "table" and r.cellDescription == cell and type(r.position) == "table"
        and type(r.rotation) == "table" then
        local p, o = r.position, r.rotation
        if isFiniteNumber(p[1]) and isFiniteNumber(p[2]) and isFiniteNumber(p[3])
            and isFiniteNumber(o[1]) and isFiniteNumber(o[2]) then
            return { x = p[1], y = p[2], z = p[3] }, { x = o[1], z = o[2] }
        end
    end
    if cell == "Balmora, Temple" then
        return { x = 4700.567, y = 3874.742, z = 14758.99 }, { x = 0.2531, z = 1.5706 }
    end
    return nil
end

local function compact(list)
    local keys = {}
    for k in pairs(list) do
        if type(k) == "number" then keys[#keys + 1] = k end
    end
    table.sort(keys)
    local items = {}
    for _, k in ipairs(keys) do items[#items + 1] = list[k]; list[k] = nil end
    for i, v in ipairs(items) do list[i] = v end
end

local function consoleLocationOk(pid)
    local loc = Players[pid].data and Players[pid].data.location
    return loc ~= nil and type(loc.cell) == "string" and loc.cell ~= ""
end

local actions = {}

function actions.teleport(pid, args)
    local cell = checkString(args.cell, "cell", { maxLen = 128 })
    if find(cell, '"', 1, true) then fail("bad_args", "cell must not contain quotes") end
    local pos, rot
    if args.pos ~= nil then
        checkObject(args.pos, "pos")
        pos = { x = checkNumber(args.pos.x, "pos.x"), y = checkNumber(args.pos.y, "pos.y"),
            z = checkNumber(args.pos.z, "pos.z") }
    end
    if args.rot ~= nil then
        checkObject(args.rot, "rot")
        rot = { x = checkNumber(args.rot.x, "rot.x", { default = 0 }),
            z = checkNumber(args.rot.z, "rot.z", { default = 0 }) }
    end
    if pos == nil then
        local kp, kr = knownPlace(cell)
        if kp then pos, rot = kp, rot or kr end
    end
    if pos == nil then
        -- No coordinates: let the client's own "centre on cell" pick the spot.
        if not consoleLocationOk(pid) then fail("no_player", "the player has no known location yet") end
        local gx, gy = cell:match("^(%-?%d+), (%-?%d+)$")
        local command = gx and format("coe %d %d", tonumber(gx), tonumber(gy)) or format('coc "%s"', cell)
        logicHandler.RunConsoleCommandOnPlayer(pid, command, false)
        return { cell = cell, method = "console", command = command }
    end
    rot = rot or { x = tes3mp.GetRotX(pid) or 0, z = tes3mp.GetRotZ(pid) or 0 }
    if not isFiniteNumber(rot.x) then rot.x = 0 end
    if not isFiniteNumber(rot.z) then rot.z = 0 end
    tes3mp.SetCell(pid, cell)
    tes3mp.SetPos(pid, pos.x, pos.y, pos.z)
    tes3mp.SetRot(pid, rot.x, rot.z)
    tes3mp.SendCell(pid)
    tes3mp.SendPos(pid)
    return { cell = cell, pos = pos, rot = rot, method = "packet" }
end

function actions.add_item(pid, args)
    local refId = checkString(args.ref_id, "ref_id", { maxLen = 128 }):lower()
    local count = checkNumber(args.count, "count", { integer = true, min = 1, max = 2147483647, default = 1 })
    local charge = floor(checkNumber(args.charge, "charge", { min = -1, max = 2147483647, default = -1 }))
    local soul = checkString(args.soul, "soul", { maxLen = 128, default = "", allowEmpty = true })
    local player = Players[pid]
    player.data.inventory = player.data.inventory or {}
    inventoryHelper.addItem(player.data.inventory, refId, count, charge, -1, soul)
    local item = { refId = refId, count = count, charge = charge, enchantmentCharge = -1, soul = soul }
    player:LoadItemChanges({ item }, inventoryEnum("ADD", 1))
    player:QuicksaveToDrive()
    local total = 0
    for _, it in pairs(player.data.inventory) do
        if type(it) == "table" and it.refId == refId and isFiniteNumber(it.count) then total = total + it.count end
    end
    return { ref_id = refId, count = count, total = total }
end

function actions.remove_item(pid, args)
    local refId = checkString(args.ref_id, "ref_id", { maxLen = 128 }):lower()
    local count = checkNumber(args.count, "count", { integer = true, min = 1, max = 2147483647, default = 1 })
    local player = Players[pid]
    local inv = player.data.inventory or {}
    local have = 0
    for _, it in pairs(inv) do
        if type(it) == "table" and it.refId == refId and isFiniteNumber(it.count) then have = have + it.count end
    end
    if have <= 0 then fail("not_found", "%s has no %s", playerName(pid), refId) end
    local removed = math.min(count, have)
    inventoryHelper.removeClosestItem(inv, refId, removed)
    compact(inv) -- removeClosestItem leaves holes where stacks ran out
    local item = { refId = refId, count = removed, charge = -1, enchantmentCharge = -1, soul = "" }
    player:LoadItemChanges({ item }, inventoryEnum("REMOVE", 2))
    player:QuicksaveToDrive()
    return { ref_id = refId, removed = removed, remaining = have - removed }
end

function actions.journal(pid, args)
    local quest = checkString(args.quest, "quest", { maxLen = 64 }):lower()
    local index = checkNumber(args.index, "index", { integer = true, min = 0, max = 65535 })
    local actor = checkString(args.actor_ref_id, "actor_ref_id", { maxLen = 128, default = "player" })
    local entry = { type = 0, index = index, quest = quest, actorRefId = actor }
    if type(enumerations) == "table" and type(enumerations.journal) == "table"
        and type(enumerations.journal.ENTRY) == "number" then
        entry.type = enumerations.journal.ENTRY
    end
    local time = type(WorldInstance) == "table" and type(WorldInstance.data) == "table" and WorldInstance.data.time
    local stamp = nil
    if type(time) == "table" and isFiniteNumber(time.daysPassed) and isFiniteNumber(time.month)
        and isFiniteNumber(time.day) then
        stamp = { daysPassed = floor(time.daysPassed), month = floor(time.month), day = floor(time.day) }
        entry.timestamp = stamp
    end
    local shared = shareJournal()
    local list = journalTable(pid)
    if list == nil then fail("no_player", "the world's journal is not loaded") end
    table.insert(list, entry)
    if shared then WorldInstance:QuicksaveToDrive() else Players[pid]:QuicksaveToDrive() end
    tes3mp.ClearJournalChanges(pid)
    if stamp then
        tes3mp.AddJournalEntryWithTimestamp(pid, quest, index, actor, stamp.daysPassed, stamp.month, stamp.day)
    else
        tes3mp.AddJournalEntry(pid, quest, index, actor)
    end
    -- A shared journal belongs to everyone: send the change to the other players too.
    tes3mp.SendJournalChanges(pid, shared, false)
    return { quest = quest, index = index, shared = shared }
end

local DYNAMIC = {
    health = { "SetHealthCurrent", "healthCurrent" },
    magicka = { "SetMagickaCurrent", "magickaCurrent" },
    fatigue = { "SetFatigueCurrent", "fatigueCurrent" },
}

-- CoreScripts' caps on base attributes and skills (its config.lua): a base past them makes
-- the server reset the player's later progress, so the bridge is refused instead.
local function statCap(canonical, isAttribute)
    local c = type(config) == "table" and config or {}
    local function cap(key, default)
        local v = c[key]
        if isFiniteNumber(v) and v >= 0 then return v, key end
        return default, key
    end
    if isAttribute then
        if canonical == "Speed" then return cap("maxSpeedValue", 365) end
        return cap("maxAttributeValue", 200)
    end
    if canonical == "Acrobatics" then return cap("maxAcrobaticsValue", 1200) end
    return cap("maxSkillValue", 200)
end

function actions.set_stat(pid, args)
    local name = checkString(args.name, "name", { maxLen = 64 })
    local key = statKey(name)
    local player = Players[pid]
    player.data.stats = player.data.stats or {}
    local dyn = DYNAMIC[key]
    if dyn then
        local value = checkNumber(args.value, "value", { min = 0, max = 1000000 })
        tes3mp[dyn[1]](pid, value)
        tes3mp.SendStatsDynamic(pid)
        player.data.stats[dyn[2]] = value
        player:QuicksaveToDrive()
        return { name = key, value = value }
    end
    if key == "level" then
        local value = checkNumber(args.value, "value", { integer = true, min = 1, max = 65535 })
        tes3mp.SetLevel(pid, value)
        tes3mp.SendLevel(pid)
        player.data.stats.level = value
        player:QuicksaveToDrive()
        return { name = "level", value = value }
    end
    local attr, skill = ATTRIBUTE_BY_KEY[key], SKILL_BY_KEY[key]
    if attr == nil and skill == nil then
        fail("bad_args", "unknown stat %s (health, magicka, fatigue, level, an attribute or a skill)", name)
    end
    local canonical = attr or skill
    local value = checkNumber(args.value, "value", { integer = true, min = 0 })
    local most, capKey = statCap(canonical, attr ~= nil)
    if value > most then
        fail("bad_args", "%s may be at most %d (CoreScripts' config.%s); %d would make the server reset the player's progress",
            canonical, most, capKey, value)
    end
    local id = attr and tes3mp.GetAttributeId(canonical) or tes3mp.GetSkillId(canonical)
    if type(id) ~= "number" or id < 0 then fail("bad_args", "the server does not know %s", canonical) end
    local store = attr and "attributes" or "skills"
    player.data[store] = player.data[store] or {}
    if attr then
        tes3mp.SetAttributeBase(pid, id, value)
        tes3mp.SendAttributes(pid)
    else
        tes3mp.SetSkillBase(pid, id, value)
        tes3mp.SendSkills(pid)
    end
    if type(player.data[store][canonical]) == "table" then
        player.data[store][canonical].base = value
    else
        player.data[store][canonical] = { base = value, damage = 0 }
    end
    player:QuicksaveToDrive()
    return { name = canonical, value = value }
end

function actions.console(pid, args)
    if not cfg.allowConsole then fail("forbidden", "console commands are disabled (allowConsole)") end
    local command = checkString(args.command, "command", { maxLen = 512 })
    if not consoleLocationOk(pid) then fail("no_player", "the player has no known location yet") end
    logicHandler.RunConsoleCommandOnPlayer(pid, command, false)
    return { command = command }
end

-- `message` addresses players itself, so it runs without a target pid.
-- `to` names the one player; the act's `player` does not apply (its default would pick one).
local function messageAction(args)
    local text = checkString(args.text, "text", { maxLen = 4000, multiline = true })
    local to = args.to
    if to ~= nil then
        to = checkString(to, "to", { maxLen = 64 })
        local pid = findPlayer(to)
        if pid == nil then fail("no_player", "no player named %s is online", to) end
        sendChat(pid, text)
        return { delivered = 1, to = playerName(pid) }
    end
    local n = 0
    for _, pid in ipairs(onlinePids()) do
        sendChat(pid, text)
        n = n + 1
    end
    return { delivered = n }
end

----------------------------------------------------------------------------------------------
-- Protocol: one decoded message from a link.
----------------------------------------------------------------------------------------------

local function errorMsg(id, code, text)
    return { type = "error", id = id, code = code, error = text }
end

-- Resynchronise a (re)connected bridge: everyone who is online, where they are.
local function announcePlayers(link)
    for _, pid in ipairs(onlinePids()) do
        local cell = currentCell(pid)
        if cell then
            local name = playerName(pid)
            send(link, { type = "presence", event = "enter", user_id = name, username = name, room = cell })
            rooms[pid] = { name = name, room = cell }
        end
    end
end

local function markReady(link)
    if link.ready then return end
    link.ready = true
    if link.dialed then dialer.backoff = 1 end
    log(LOG.INFO, "link %s is up (%s)", link.peer, link.dialed and "we dialed" or "accepted")
    announcePlayers(link)
end

local function majorVersion(v)
    if type(v) == "number" then return floor(v) end
    if type(v) == "string" then return tonumber(v:match("^%s*(%d+)")) end
    return nil
end

local function runAct(link, msg)
    local args = msg.args
    local ok, res = pcall(function()
        local action = checkString(msg.action, "action", { maxLen = 64 })
        if args == nil then args = {} end
        checkObject(args, "args")
        if action == "message" then return messageAction(args) end
        local fn = actions[action]
        if fn == nil then fail("unknown_action", "unknown action %s", action) end
        local pid = targetPlayer(msg.player)
        return fn(pid, args)
    end)
    if ok then
        send(link, { type = "result", id = msg.id, ok = true, data = json.object(res or {}) })
    elseif getmetatable(res) == ArgError then
        send(link, { type = "result", id = msg.id, ok = false, code = res.code, error = res.message })
    else
        log(LOG.ERROR, "act %s failed: %s", tostring(msg.action), tostring(res))
        send(link, { type = "result", id = msg.id, ok = false, code = "internal_error",
            error = "the script failed: " .. tostring(res) })
    end
end

local function runObserve(link, msg)
    local ok, res = pcall(function()
        if msg.player ~= nil then return buildPerception(targetPlayer(msg.player), msg.id) end
        return buildPerception(onlinePids()[1], msg.id)
    end)
    if ok then
        send(link, res)
    elseif getmetatable(res) == ArgError then
        send(link, errorMsg(msg.id, res.code == "no_player" and "not_found" or "bad_field", res.message))
    else
        log(LOG.ERROR, "observe failed: %s", tostring(res))
        send(link, errorMsg(msg.id, "internal_error", "the script failed: " .. tostring(res)))
    end
end

-- Players whose current cell is `room`; everyone when `room` is not given.
local function playersIn(room)
    local out = {}
    for _, pid in ipairs(onlinePids()) do
        if room == nil or currentCell(pid) == room then out[#out + 1] = pid end
    end
    return out
end

local function runSpeak(msg)
    if type(msg.text) ~= "string" or msg.text == "" then return "text must be a non-empty string" end
    local line = "[" .. cfg.agentName .. "] " .. msg.text
    if msg.user_id ~= nil then
        if type(msg.user_id) ~= "string" then return "user_id must be a string" end
        local pid = findPlayer(msg.user_id)
        if pid then sendChat(pid, line) end
        return nil
    end
    local room = msg.room
    if room ~= nil and type(room) ~= "string" then return "room must be a string" end
    for _, pid in ipairs(playersIn(room)) do sendChat(pid, line) end
    return nil
end

-- A say/presence/event/bark record relayed from elsewhere (the bridge never sends a link
-- its own events back): show it to the players in that cell.
local function runRelay(msg)
    local who = type(msg.username) == "string" and msg.username
        or (type(msg.user_id) == "string" and msg.user_id) or "someone"
    local text
    if msg.type == "say" then
        if type(msg.message) ~= "string" then return "message must be a string" end
        text = who .. ": " .. msg.message
    elseif msg.type == "bark" then
        -- the agent spoke aloud in this cell through another world's link
        if type(msg.message) ~= "string" then return "message must be a string" end
        local room = type(msg.room) == "string" and msg.room or nil
        for _, pid in ipairs(playersIn(room)) do sendChat(pid, "[" .. cfg.agentName .. "] " .. msg.message) end
        return nil
    elseif msg.type == "presence" then
        text = who .. (msg.event == "leave" and " left." or " arrived.")
    else
        local name = type(msg.event) == "string" and msg.event or "event"
        text = type(msg.message) == "string" and msg.message or name
    end
    local room = type(msg.room) == "string" and msg.room or nil
    for _, pid in ipairs(playersIn(room)) do sendChat(pid, cfg.relayTag .. " " .. text) end
    return nil
end

local function runReply(msg)
    local pending = msg.id ~= nil and pendingChats[msg.id]
    if not pending then
        log(LOG.VERBOSE, "reply for an unknown chat %s", tostring(msg.id))
        return
    end
    pendingChats[msg.id] = nil
    pendingCount = pendingCount - 1
    if not isOnline(pending.pid) or playerName(pending.pid) ~= pending.name then return end
    if msg.type == "reply" and pending.streamed then return end -- its parts are on screen
    local text = msg.type == "reply" and msg.text or ("(no answer: " .. tostring(msg.error or msg.code) .. ")")
    if type(text) ~= "string" then return end
    sendChat(pending.pid, "[" .. cfg.agentName .. "] " .. text)
end

-- A part of a streamed reply (`reply_part`), or `reply_thinking`: shown as it comes.
local function runPart(msg)
    local pending = msg.id ~= nil and pendingChats[msg.id]
    if not pending then return end
    pending.expires = now() + cfg.chatTimeoutS
    if not isOnline(pending.pid) or playerName(pending.pid) ~= pending.name then return end
    if msg.type == "reply_thinking" then
        sendChat(pending.pid, "[" .. cfg.agentName .. "] is thinking...")
        return
    end
    if type(msg.text) ~= "string" then return end
    local text = msg.text:gsub("^%s+", "")
    if text == "" then return end
    pending.streamed = true
    sendChat(pending.pid, "[" .. cfg.agentName .. "] " .. text)
end

local function validId(id)
    if id == nil or type(id) == "string" and #id <= 128 then return true end
    return type(id) == "number" and id == floor(id) and id > -2^53 and id < 2^53
end

handleLine = function(link, line)
    if not find(line, "%S") then return end -- empty lines are ignored
    local msg, err = json.decode(line)
    if type(msg) ~= "table" or msg == json.null or getmetatable(msg) == ARRAY then
        send(link, errorMsg(nil, "bad_json", "not a JSON object: " .. tostring(err or "wrong type")))
        return
    end
    local kind = msg.type
    if type(kind) ~= "string" then
        if kind == nil then
            send(link, errorMsg(nil, "missing_field", "a message needs a string type"))
        else
            send(link, errorMsg(nil, "bad_field", "type must be a string"))
        end
        return
    end
    if not validId(msg.id) then
        send(link, errorMsg(nil, "bad_field", "id must be a string or an integer"))
        return
    end
    local id = msg.id

    if not link.authed and kind ~= "hello" then
        send(link, errorMsg(id, "unauthorized", "say hello with the token first"))
        link.closeAfterFlush = true
        return
    end
    if msg.protocol_version ~= nil then
        local major = majorVersion(msg.protocol_version)
        if major == nil or major > 1 then
            send(link, errorMsg(id, "unsupported_version", "this script speaks protocol version 1"))
            return
        end
    end

    if kind == "hello" then
        local major = msg.protocol == nil and 1 or majorVersion(msg.protocol)
        if major == nil or major > 1 then
            send(link, errorMsg(id, "unsupported_version", "this script speaks protocol 1"))
            link.closeAfterFlush = true
            return
        end
        if cfg.token ~= "" and msg.token ~= cfg.token then
            send(link, errorMsg(id, "unauthorized", "wrong or missing token"))
            link.closeAfterFlush = true
            return
        end
        link.authed = true
        link.peerWorld = type(msg.world) == "string" and msg.world or nil
        send(link, { type = "welcome", id = id, world = cfg.world, kind = "tes3mp", protocol = 1,
            heartbeat_s = cfg.heartbeatS })
        markReady(link)
    elseif kind == "welcome" then
        if type(msg.heartbeat_s) == "number" and msg.heartbeat_s >= 1 then
            link.heartbeat = math.min(msg.heartbeat_s, 3600)
        end
        markReady(link)
    elseif kind == "ping" then
        send(link, { type = "pong", id = id })
    elseif kind == "pong" or kind == "ok" then
        -- answers to our pings and presence; nothing to do
    elseif kind == "act" then
        if id == nil then
            send(link, errorMsg(nil, "missing_field", "act needs an id"))
            return
        end
        runAct(link, msg)
    elseif kind == "observe" then
        runObserve(link, msg)
    elseif kind == "speak" or kind == "say" or kind == "presence" or kind == "event" or kind == "bark" then
        local problem = (kind == "speak" and runSpeak or runRelay)(msg)
        if problem then
            send(link, errorMsg(id, "bad_field", problem))
        elseif id ~= nil then
            send(link, { type = "ok", id = id }) -- an id always gets exactly one answer
        end
    elseif kind == "reply" then
        runReply(msg)
    elseif kind == "reply_part" or kind == "reply_thinking" then
        runPart(msg)
    elseif kind == "error" then
        if id ~= nil and pendingChats[id] then
            runReply(msg)
        else
            log(LOG.WARN, "link %s says %s: %s", link.peer, tostring(msg.code), tostring(msg.error))
        end
    else
        send(link, errorMsg(id, "unknown_type", "unknown type " .. kind))
    end
end

----------------------------------------------------------------------------------------------
-- Game events to the bridge
----------------------------------------------------------------------------------------------

local function presenceEnter(pid)
    local cell = currentCell(pid)
    if not cell then return end
    local name = playerName(pid)
    rooms[pid] = { name = name, room = cell }
    broadcast({ type = "presence", event = "enter", user_id = name, username = name, room = cell })
end

local function onAuthentified(_, pid)
    if not isOnline(pid) then return end
    presenceEnter(pid)
end

local function onDisconnect(_, pid)
    if type(pid) ~= "number" then return end
    local known = rooms[pid]
    local name = known and known.name or (Players[pid] and playerName(pid))
    rooms[pid] = nil
    if not name then return end
    broadcast({ type = "presence", event = "leave", user_id = name, username = name,
        room = known and known.room or nil })
end

local function onCellChange(_, pid)
    if not isOnline(pid) then return end
    presenceEnter(pid)
    if #readyLinks() > 0 then broadcast(buildPerception(pid, nil)) end
end

local function onJournal(_, pid, playerPacket)
    if not isOnline(pid) or #readyLinks() == 0 then return end
    local name, cell = playerName(pid), currentCell(pid)
    local entries = type(playerPacket) == "table" and playerPacket.journal or nil
    if type(entries) ~= "table" or cell == nil then return end -- an event needs its room
    for _, e in ipairs(entries) do
        if type(e) == "table" and type(e.quest) == "string" then
            broadcast({ type = "event", event = "journal", room = cell,
                message = format("%s's journal: %s reached stage %s", name, e.quest, tostring(e.index)),
                user_id = name, quest = e.quest, index = e.index })
        end
    end
end

-- A validator, so the line can be swallowed: the other players never see "/timmy ...", and
-- CoreScripts' command handler does not answer "not a valid command".
local function onSendMessage(_, pid, message)
    if type(message) ~= "string" or not isOnline(pid) then return nil end
    local prefix = cfg.chatPrefix
    local head = message:sub(1, #prefix):lower()
    local bare = prefix:gsub("%s+$", "")
    if head ~= prefix:lower() and message:lower() ~= bare:lower() then return nil end
    local swallow = customEventHooks.makeEventStatus(false, nil)
    local text = message:sub(#prefix + 1):gsub("^%s+", ""):gsub("%s+$", "")
    local tag = "[" .. cfg.agentName .. "] "
    if text == "" then
        sendChat(pid, tag .. "Say something after " .. bare .. ", e.g. " .. bare .. " hello")
        return swallow
    end
    local link = chatLink()
    if link == nil then
        sendChat(pid, tag .. cfg.agentName .. " is not connected right now.")
        return swallow
    end
    if pendingCount >= cfg.maxPendingChats then
        sendChat(pid, tag .. cfg.agentName .. " is busy; try again in a moment.")
        return swallow
    end
    local name = playerName(pid)
    local id = newId("chat")
    pendingChats[id] = { pid = pid, name = name, expires = now() + cfg.chatTimeoutS }
    pendingCount = pendingCount + 1
    sendChat(pid, "[you to " .. cfg.agentName .. "] " .. text)
    send(link, { type = "chat", id = id, user_id = name, username = name, room = currentCell(pid),
        message = text, stream = cfg.streamReplies or nil })
    return swallow
end

--- For other TES3MP scripts: raise a world event (a fire, rain, ...) in `cell`:
---     local timmy_bridge = require("custom/timmy_bridge")
---     timmy_bridge.worldEvent("Balmora, Temple", "rain", "Rain drums on the dome.")
--- The bridge shows it in that room; the kinds in its `federation.event_kinds` (fire, rain,
--- growth, storm, quake by default) also reach every world of its federation.
--- `federate`: nil = the bridge's rule, true = every world (scope "federation"), false =
--- this world only (scope "local"). Returns how many links it was sent on (0: no link to a
--- bridge is up, nothing sent), or nil and an error sentence on bad arguments.
function M.worldEvent(cell, kind, message, federate)
    local ok, err = pcall(function()
        cell = checkString(cell, "cell", { maxLen = 256 })
        kind = checkString(kind, "kind", { maxLen = 256 })
        message = checkString(message, "message", { optional = true, maxLen = 4000, multiline = true })
        if federate ~= nil and type(federate) ~= "boolean" then
            fail("bad_args", "federate must be true, false or nil, not %s", type(federate))
        end
    end)
    if not ok then
        local text = type(err) == "table" and err.message or tostring(err)
        log(LOG.WARN, "worldEvent refused: %s", text)
        return nil, text
    end
    local msg = { type = "event", room = cell, event = kind, message = message }
    if federate == true then msg.scope = "federation" elseif federate == false then msg.scope = "local" end
    local n = broadcast(msg)
    if n == 0 then
        log(LOG.INFO, "worldEvent %s in %s not sent: no link to the bridge is up", kind, cell)
    end
    return n
end

----------------------------------------------------------------------------------------------
-- The poll: connect/accept, read, parse, write, heartbeat. Never blocks.
----------------------------------------------------------------------------------------------

local READ_CHUNK = 8192
local READ_BUDGET = 32 -- chunks per link per tick

local function readLink(link)
    for _ = 1, READ_BUDGET do
        local data, err, partial = link.sock:receive(READ_CHUNK)
        local chunk = data or partial
        if chunk and #chunk > 0 then
            link.lastHeard = now()
            link.pinged = false
            link.inbuf:push(chunk)
            while not link.closed and not link.closeAfterFlush do
                local line, problem = link.inbuf:pop()
                if line then
                    handleLine(link, line)
                elseif problem == "too_long" then
                    send(link, errorMsg(nil, "line_too_long",
                        "a line is longer than " .. cfg.maxLineBytes .. " bytes; it was dropped"))
                else
                    break
                end
            end
        end
        if link.closed then return end
        if err == "timeout" then return end
        if err then
            closeLink(link, err == "closed" and "peer closed" or err)
            return
        end
    end
end

local function writeLink(link)
    local ok, err = link.out:flush(link.sock)
    if not ok then
        closeLink(link, "send failed: " .. tostring(err))
    elseif link.closeAfterFlush and link.out:empty() then
        closeLink(link, "refused")
    end
end

local function heartbeat(link, t)
    local hb = link.heartbeat or cfg.heartbeatS
    local quiet = t - link.lastHeard
    if quiet > 3 * hb then
        closeLink(link, "silent for " .. floor(quiet) .. " s")
    elseif quiet > 2 * hb and not link.pinged then
        link.pinged = true
        send(link, { type = "ping", id = newId("ping") })
    end
    if link.dialed and not link.ready and t - link.openedAt > 10 then
        closeLink(link, "no welcome within 10 s")
    end
end

local function isNumericHost(host)
    return type(host) == "string" and (host:match("^%d+%.%d+%.%d+%.%d+$") ~= nil or host:find(":", 1, true) ~= nil)
end

-- luasocket 3's socket.tcp() opens its fd lazily at bind/connect, so options set before
-- that (reuseaddr) are lost; tcp4()/tcp6() open it now. Older luasocket only has tcp().
local function newTcp(host)
    if host:find(":", 1, true) then return socketLib.tcp6() end
    return (socketLib.tcp4 or socketLib.tcp)()
end

local function pumpListener(t)
    if listener == nil then
        if t < nextListenTry then return end
        local srv, err = newTcp(cfg.listenHost)
        local ok
        if srv then
            -- without reuseaddr a restarted server could not bind while old links sit in TIME_WAIT
            if not srv:setoption("reuseaddr", true) then log(LOG.WARN, "cannot set reuseaddr") end
            ok, err = srv:bind(cfg.listenHost, cfg.listenPort)
            if ok then ok, err = srv:listen(32) end
        end
        if not ok then
            if srv then srv:close() end
            log(LOG.ERROR, "cannot listen on %s:%d: %s (retrying in 5 s)", cfg.listenHost, cfg.listenPort, tostring(err))
            nextListenTry = t + 5
            return
        end
        srv:settimeout(0)
        listener = srv
        local host, port = srv:getsockname()
        log(LOG.INFO, "listening on %s:%s for the bridge (world %s)", tostring(host), tostring(port), cfg.world)
    end
    for _ = 1, 8 do
        local client, err = listener:accept()
        if client == nil then
            if err ~= "timeout" then log(LOG.WARN, "accept failed: %s", tostring(err)) end
            return
        end
        client:settimeout(0) -- accepted sockets start out blocking
        client:setoption("tcp-nodelay", true)
        local host, port = client:getpeername()
        local peer = tostring(host) .. ":" .. tostring(port)
        if #links >= cfg.maxClients then
            client:send(json.encode(errorMsg(nil, "limit_reached", "too many connections")) .. "\n")
            client:close()
            log(LOG.WARN, "refused %s: already %d connections", peer, #links)
        else
            newLink(client, peer, false)
            log(LOG.INFO, "accepted %s", peer)
        end
    end
end

local function connected(sock)
    sock:setoption("tcp-nodelay", true)
    dialer.state = "linked"
    local link = newLink(sock, cfg.bridgeHost .. ":" .. cfg.bridgePort, true)
    local hello = { type = "hello", world = cfg.world, kind = "tes3mp", protocol = 1 }
    if cfg.token ~= "" then hello.token = cfg.token end
    send(link, hello)
end

local function dialFailed(why)
    if dialer.sock then pcall(function() dialer.sock:close() end) end
    dialer.sock = nil
    dialer.state = "idle"
    dialer.nextAttempt = now() + dialer.backoff
    log(LOG.INFO, "cannot reach the bridge at %s:%d (%s); retrying in %d s",
        cfg.bridgeHost, cfg.bridgePort, tostring(why), dialer.backoff)
    dialer.backoff = math.min(dialer.backoff * 2, 30)
end

local function pumpDialer(t)
    if dialer.state == "idle" then
        if t < dialer.nextAttempt then return end
        local sock, err = newTcp(cfg.bridgeHost)
        if not sock then return dialFailed(err) end
        sock:settimeout(0)
        local ok, cerr = sock:connect(cfg.bridgeHost, cfg.bridgePort)
        dialer.sock = sock
        if ok or cerr == "already connected" then
            dialer.sock = nil
            return connected(sock)
        end
        if cerr ~= "timeout" and cerr ~= "Operation already in progress" then return dialFailed(cerr) end
        dialer.state = "connecting"
        dialer.deadline = t + 5
    elseif dialer.state == "connecting" then
        local sock = dialer.sock
        local _, writable = socketLib.select(nil, { sock }, 0)
        if writable and writable[1] == sock then
            local ok, err = sock:connect(cfg.bridgeHost, cfg.bridgePort)
            if ok or err == "already connected" then
                dialer.sock = nil
                return connected(sock)
            end
            return dialFailed(err)
        end
        if t > dialer.deadline then dialFailed("connect timed out") end
    end
end

local function expireChats(t)
    for id, p in pairs(pendingChats) do
        if t > p.expires then
            pendingChats[id] = nil
            pendingCount = pendingCount - 1
            if isOnline(p.pid) and playerName(p.pid) == p.name then
                sendChat(p.pid, "[" .. cfg.agentName .. "] (no answer in time)")
            end
        end
    end
end

local function pump()
    local t = now()
    if cfg.role == "listen" then pumpListener(t) else pumpDialer(t) end
    -- iterate over a copy: links close (and leave the list) while we go
    local snapshot = {}
    for i, l in ipairs(links) do snapshot[i] = l end
    for _, link in ipairs(snapshot) do
        if not link.closed then readLink(link) end
        if not link.closed then heartbeat(link, t) end
        if not link.closed then writeLink(link) end
    end
    expireChats(t)
end
M.pump = pump

--- The timer callback: a global, looked up by name when the timer fires.
function TimmyBridgeTick()
    local ok, err = pcall(pump)
    if not ok then
        local t = os.time()
        if t ~= lastTickError then
            lastTickError = t
            log(LOG.ERROR, "poll failed: %s", tostring(err))
        end
    end
    tes3mp.RestartTimer(timerId, cfg.pollMs)
end

----------------------------------------------------------------------------------------------
-- Start-up
----------------------------------------------------------------------------------------------

local function loadConfig()
    local file = {}
    local ok, res = pcall(require, "custom/timmy_bridge_config")
    if ok then
        if type(res) == "table" then file = res
        else log(LOG.WARN, "custom/timmy_bridge_config did not return a table; ignored") end
    elseif not tostring(res):find("module 'custom/timmy_bridge_config' not found", 1, true) then
        log(LOG.ERROR, "custom/timmy_bridge_config failed to load: %s", tostring(res))
    end
    local out = {}
    for k, v in pairs(DEFAULTS) do out[k] = v end
    for _, src in ipairs({ CONFIG, file }) do
        for k, v in pairs(src) do
            local d = DEFAULTS[k]
            if d == nil then
                log(LOG.WARN, "unknown config key %s ignored", tostring(k))
            elseif k == "shareJournal" and (v == true or v == false or v == "auto") then
                out[k] = v
            elseif type(v) ~= type(d) then
                log(LOG.WARN, "config %s must be a %s, not %s; using %s", k, type(d), type(v), tostring(d))
            else
                out[k] = v
            end
        end
    end
    if not ROLES[out.role] then
        log(LOG.WARN, "config role must be connect or listen, not %s; using connect", tostring(out.role))
        out.role = "connect"
    end
    for _, k in ipairs({ "listenPort", "bridgePort" }) do
        if out[k] ~= floor(out[k]) or out[k] < 0 or out[k] > 65535 then
            log(LOG.WARN, "config %s must be a port number; using %d", k, DEFAULTS[k])
            out[k] = DEFAULTS[k]
        end
    end
    for _, k in ipairs({ "pollMs", "heartbeatS", "maxLineBytes", "maxQueueBytes", "maxClients",
        "maxPendingChats", "chatTimeoutS", "nearbyRadius", "maxNearby", "maxInventory" }) do
        if out[k] < 1 then
            log(LOG.WARN, "config %s must be positive; using %s", k, tostring(DEFAULTS[k]))
            out[k] = DEFAULTS[k]
        end
    end
    out.pollMs = floor(out.pollMs)
    if out.chatPrefix == "" then out.chatPrefix = DEFAULTS.chatPrefix end
    return out
end

local function start()
    if timerId ~= nil then return end
    timerId = tes3mp.CreateTimer("TimmyBridgeTick", cfg.pollMs)
    tes3mp.StartTimer(timerId)
    local ok, err = pcall(pump) -- listen (or dial) now rather than one interval later
    if not ok then log(LOG.ERROR, "poll failed: %s", tostring(err)) end
    if cfg.role == "listen" then
        log(LOG.INFO, "started: role listen on %s:%d, world %s", cfg.listenHost, cfg.listenPort, cfg.world)
    else
        log(LOG.INFO, "started: role connect to %s:%d, world %s", cfg.bridgeHost, cfg.bridgePort, cfg.world)
    end
end

local function stop()
    M.stopping = true
    for i = #links, 1, -1 do
        local link = links[i]
        pcall(function() link.out:flush(link.sock) end)
        closeLink(link, "server exit")
    end
    if listener then pcall(function() listener:close() end) listener = nil end
    if dialer.sock then pcall(function() dialer.sock:close() end) dialer.sock = nil end
end

-- A hook must never raise into CoreScripts: log and carry on. Game-event handlers also
-- respect another script's validCustomHandlers = false (CoreScripts calls them anyway).
local function guarded(name, fn, always)
    return function(eventStatus, ...)
        if not always and type(eventStatus) == "table" and eventStatus.validCustomHandlers == false then
            return nil
        end
        local ok, res = pcall(fn, eventStatus, ...)
        if not ok then
            log(LOG.ERROR, "%s failed: %s", name, tostring(res))
            return nil
        end
        return res
    end
end

local function init()
    cfg = loadConfig()
    M.config = cfg
    local ok, lib = pcall(require, "socket")
    if not ok or type(lib) ~= "table" then
        log(LOG.ERROR, "luasocket is not available (%s); the bridge is off. Install lua-socket "
            .. "or put socket/core.so in server/lib/ (see docs/tes3mp.md).", tostring(lib))
        return false
    end
    socketLib = lib
    local host = cfg.role == "listen" and cfg.listenHost or cfg.bridgeHost
    if not isNumericHost(host) then
        log(LOG.ERROR, "%s must be a numeric IP address (names would block on the resolver), not %s; "
            .. "the bridge is off", cfg.role == "listen" and "listenHost" or "bridgeHost", tostring(host))
        return false
    end
    if type(customEventHooks) ~= "table" then
        log(LOG.ERROR, "customEventHooks is missing: load this from server/scripts/customScripts.lua")
        return false
    end
    customEventHooks.registerHandler("OnServerPostInit", guarded("OnServerPostInit", start, true))
    customEventHooks.registerHandler("OnServerExit", guarded("OnServerExit", stop, true))
    customEventHooks.registerHandler("OnPlayerAuthentified", guarded("OnPlayerAuthentified", onAuthentified))
    customEventHooks.registerHandler("OnPlayerDisconnect", guarded("OnPlayerDisconnect", onDisconnect, true))
    customEventHooks.registerHandler("OnPlayerCellChange", guarded("OnPlayerCellChange", onCellChange))
    customEventHooks.registerHandler("OnPlayerJournal", guarded("OnPlayerJournal", onJournal))
    customEventHooks.registerValidator("OnPlayerSendMessage", guarded("OnPlayerSendMessage", onSendMessage))
    return true
end

-- For lua/test_units.lua: drive one link without a socket of the OS.
M._newLink = function(sock, peer, dialed) return newLink(sock, peer, dialed) end
M._handleLine = function(link, line) return handleLine(link, line) end

M.enabled = init()
return M
