--[[
tes3mp_stub.lua: a test double of the TES3MP 0.8.1 server for lua/timmy_bridge.lua.

What it owns: the `tes3mp` API table (every function declares its argument types), the
CoreScripts globals the script touches (customEventHooks, logicHandler, inventoryHelper,
Players, WorldInstance, LoadedCells, config, enumerations, color), a small model of each
connected client (cell, position, stats), the timer table, and the record of every call.

It behaves like the server where that matters for a script (reference §4, §6.7, §8):
  * a tes3mp.* call with an argument of the wrong type ABORTS the process (exit 134, a
    message on stderr and a {"fatal":...} line on stdout), as LuaBridge does inside the
    server's noexcept bindings; so does calling a tes3mp function the stub does not know;
  * timers are one-shot, their callback is looked up as a global by name when they fire,
    only RestartTimer re-arms them, an error inside a callback is not caught, and creating
    a timer from inside a timer callback aborts;
  * hooks are fired as CoreScripts fires them: validators, the default behaviour when
    validDefaultHandler holds, then handlers, with eventStatus first;
  * SendCell is echoed back like a real client would: on the next step the player's cell
    changes and OnPlayerCellChange fires.

Usage:
    local stub = dofile("lua/tes3mp_stub.lua")
    stub.install()                  -- sets the globals
    stub.onCall = function(name, args) ... end
    stub.serverInit()               -- OnServerInit, OnServerPostInit
    local pid = stub.join("Alice")  -- OnPlayerConnect, OnPlayerAuthentified
    stub.step()                     -- deliver client echoes, fire due timers
]]

local stub = {}

stub.calls = {}        -- every recorded call: { name = "SetCell", args = { 0, "Balmora, Temple" } }
stub.onCall = nil      -- function(name, args), after recording
stub.clients = {}      -- pid -> the client's state (what the Get* functions answer)
stub.cellActors = {}   -- cell -> array of actors { refId, refNum, mpNum, x, y, z, health }
stub.timers = {}
stub.clientEcho = true -- answer SendCell with a cell change like a real client
stub.now = os.clock    -- the harness replaces this with socket.gettime

local unpack = unpack or table.unpack
local floor = math.floor

----------------------------------------------------------------------------------------------
-- A JSON encoder of its own, so the records do not depend on the codec under test.
----------------------------------------------------------------------------------------------

local function encodeString(s)
    return '"' .. s:gsub('[%z\1-\31"\\\127]', function(c)
        if c == '"' then return '\\"' end
        if c == "\\" then return "\\\\" end
        if c == "\n" then return "\\n" end
        return string.format("\\u%04x", c:byte())
    end) .. '"'
end

local function encode(v, depth)
    depth = depth or 0
    local t = type(v)
    if v == nil then return "null" end
    if t == "boolean" then return tostring(v) end
    if t == "number" then
        if v ~= v or v == math.huge or v == -math.huge then return "null" end
        if v == floor(v) and math.abs(v) < 2^53 then return string.format("%d", v) end
        local short = string.format("%.15g", v)
        return tonumber(short) == v and short or string.format("%.17g", v)
    end
    if t == "string" then return encodeString(v) end
    if t == "table" and depth < 20 then
        local n = 0
        for _ in pairs(v) do n = n + 1 end
        if n == #v and (n > 0 or getmetatable(v) == stub.ARRAY) then
            local parts = {}
            for i = 1, n do parts[i] = encode(v[i], depth + 1) end
            return "[" .. table.concat(parts, ",") .. "]"
        end
        local keys = {}
        for k in pairs(v) do keys[#keys + 1] = tostring(k) end
        table.sort(keys)
        local parts = {}
        for _, k in ipairs(keys) do
            local val = v[k]
            if val == nil then val = v[tonumber(k)] end
            parts[#parts + 1] = encodeString(k) .. ":" .. encode(val, depth + 1)
        end
        return "{" .. table.concat(parts, ",") .. "}"
    end
    return encodeString("<" .. t .. ">")
end
stub.ARRAY = {}
stub.encode = encode

----------------------------------------------------------------------------------------------
-- Recording and aborting
----------------------------------------------------------------------------------------------

local function record(name, args)
    local call = { name = name, args = args }
    stub.calls[#stub.calls + 1] = call
    if stub.onCall then stub.onCall(name, args) end
end
stub.record = record

--- End the process the way the server ends when a binding gets a bad argument.
function stub.abort(message)
    io.stdout:write(encode({ fatal = message }), "\n")
    io.stdout:flush()
    io.stderr:write("tes3mp_stub: FATAL: ", message, "\n", debug.traceback("", 3), "\n")
    io.stderr:flush()
    os.exit(134)
end

----------------------------------------------------------------------------------------------
-- Argument types, as LuaBridge reads them in the server (stricter where that catches bugs:
-- a string must be a string, an integer must be integral).
----------------------------------------------------------------------------------------------

local function isInt(v) return type(v) == "number" and v == floor(v) and v > -2^53 and v < 2^53 end

local TYPES = {
    pid = { "a player id (integer 0..65535)", function(v) return isInt(v) and v >= 0 and v <= 65535 end },
    int = { "an integer", isInt },
    uint = { "an unsigned integer", function(v) return isInt(v) and v >= 0 end },
    num = { "a number", function(v) return type(v) == "number" and v == v end },
    str = { "a string", function(v) return type(v) == "string" end },
    bool = { "a boolean", function(v) return type(v) == "boolean" end },
    ["bool?"] = { "a boolean or nothing", function(v) return v == nil or type(v) == "boolean" end },
}

-- name -> argument types; "..." ends a variadic list.
local SIGNATURES = {
    GetServerVersion = {}, StopServer = { "int" }, GetMaxPlayers = {}, GetLastPlayerId = {},
    LogMessage = { "int", "str" }, LogAppend = { "int", "str" },

    CreateTimer = { "str", "int" }, CreateTimerEx = { "str", "int", "str", "..." },
    StartTimer = { "int" }, RestartTimer = { "int", "int" }, StopTimer = { "int" },
    IsTimerElapsed = { "int" }, FreeTimer = { "int" },

    GetName = { "pid" }, Kick = { "pid" },
    GetCell = { "pid" }, IsInExterior = { "pid" }, GetRegion = { "pid" }, IsChangingRegion = { "pid" },
    GetExteriorX = { "pid" }, GetExteriorY = { "pid" },
    GetPosX = { "pid" }, GetPosY = { "pid" }, GetPosZ = { "pid" }, GetRotX = { "pid" }, GetRotZ = { "pid" },
    SetCell = { "pid", "str" }, SetExteriorCell = { "pid", "int", "int" },
    SetPos = { "pid", "num", "num", "num" }, SetRot = { "pid", "num", "num" },
    SendCell = { "pid" }, SendPos = { "pid" },

    ClearInventoryChanges = { "pid" }, SetInventoryChangesAction = { "pid", "uint" },
    AddItemChange = { "pid", "str", "uint", "int", "num", "str" },
    SendInventoryChanges = { "pid", "bool?", "bool?" },

    ClearJournalChanges = { "pid" }, AddJournalEntry = { "pid", "str", "int", "str" },
    AddJournalEntryWithTimestamp = { "pid", "str", "int", "str", "int", "int", "int" },
    AddJournalIndex = { "pid", "str", "int" }, SendJournalChanges = { "pid", "bool?", "bool?" },

    GetLevel = { "pid" }, SetLevel = { "pid", "int" }, SendLevel = { "pid" },
    GetHealthBase = { "pid" }, GetHealthCurrent = { "pid" }, SetHealthBase = { "pid", "num" },
    SetHealthCurrent = { "pid", "num" },
    GetMagickaBase = { "pid" }, GetMagickaCurrent = { "pid" }, SetMagickaBase = { "pid", "num" },
    SetMagickaCurrent = { "pid", "num" },
    GetFatigueBase = { "pid" }, GetFatigueCurrent = { "pid" }, SetFatigueBase = { "pid", "num" },
    SetFatigueCurrent = { "pid", "num" },
    SendStatsDynamic = { "pid" },
    GetAttributeCount = {}, GetSkillCount = {}, GetAttributeId = { "str" }, GetSkillId = { "str" },
    GetAttributeName = { "uint" }, GetSkillName = { "uint" },
    GetAttributeBase = { "pid", "uint" }, SetAttributeBase = { "pid", "uint", "int" }, SendAttributes = { "pid" },
    GetSkillBase = { "pid", "uint" }, SetSkillBase = { "pid", "uint", "int" }, SendSkills = { "pid" },

    SendMessage = { "pid", "str", "bool?", "bool?" }, MessageBox = { "pid", "int", "str" },

    ClearObjectList = {}, SetObjectListPid = { "pid" }, SetObjectListCell = { "str" },
    SetObjectListConsoleCommand = { "str" }, SetPlayerAsObject = { "pid" }, AddObject = {},
    SendConsoleCommand = { "bool?", "bool?" },

    ReadCellActorList = { "str" }, GetActorListSize = {},
    GetActorRefId = { "uint" }, GetActorRefNum = { "uint" }, GetActorMpNum = { "uint" },
    GetActorPosX = { "uint" }, GetActorPosY = { "uint" }, GetActorPosZ = { "uint" },
    DoesActorHavePosition = { "uint" }, DoesActorHaveStatsDynamic = { "uint" },
    GetActorHealthCurrent = { "uint" },
}
stub.SIGNATURES = SIGNATURES

local function checkArgs(name, sig, args, n)
    local variadic = sig[#sig] == "..."
    local fixed = variadic and #sig - 1 or #sig
    if n > fixed and not variadic then
        stub.abort(string.format("tes3mp.%s takes %d argument(s), got %d", name, fixed, n))
    end
    for i = 1, fixed do
        local kind = TYPES[sig[i]]
        if not kind[2](args[i]) then
            stub.abort(string.format("bad argument #%d to tes3mp.%s (%s expected, got %s %s)",
                i, name, kind[1], type(args[i]), tostring(args[i])))
        end
    end
end

----------------------------------------------------------------------------------------------
-- The server's side of each function
----------------------------------------------------------------------------------------------

local ATTRIBUTES = { "Strength", "Intelligence", "Willpower", "Agility", "Speed", "Endurance",
    "Personality", "Luck" }
local SKILLS = { "Block", "Armorer", "Mediumarmor", "Heavyarmor", "Bluntweapon", "Longblade", "Axe",
    "Spear", "Athletics", "Enchant", "Destruction", "Alteration", "Illusion", "Conjuration",
    "Mysticism", "Restoration", "Alchemy", "Unarmored", "Security", "Sneak", "Acrobatics",
    "Lightarmor", "Shortblade", "Marksman", "Mercantile", "Speechcraft", "Handtohand" }

local function indexOf(list, name)
    for i, v in ipairs(list) do
        if v:lower() == name:lower() then return i - 1 end
    end
    return -1
end

local impl = {}
local inTimerCallback = false
local nextTimerId = 0
local readActors = {}
local deferred = {} -- client echoes to deliver on the next step

local function client(pid) return stub.clients[pid] end

function impl.GetServerVersion() return "0.8.1" end
function impl.GetMaxPlayers() return 64 end
function impl.GetLastPlayerId()
    local last = -1
    for pid in pairs(stub.clients) do if pid > last then last = pid end end
    return last
end
function impl.StopServer(code) stub.stopped = code end

function impl.CreateTimer(name, ms) return impl.CreateTimerEx(name, ms, "") end
function impl.CreateTimerEx(name, ms, types, ...)
    if inTimerCallback then
        stub.abort("tes3mp.CreateTimer called from inside a timer callback (the timer map may rehash)")
    end
    nextTimerId = nextTimerId + 1
    stub.timers[nextTimerId] = { name = name, ms = ms, args = { ... }, running = false }
    return nextTimerId
end
local function timer(id, name)
    local t = stub.timers[id]
    if t == nil then stub.abort(string.format("tes3mp.%s: timer %d not found", name, id)) end
    if t.freed then stub.abort(string.format("tes3mp.%s: timer %d was freed", name, id)) end
    return t
end
function impl.StartTimer(id)
    local t = timer(id, "StartTimer")
    t.running, t.due = true, stub.now() + t.ms / 1000
end
function impl.RestartTimer(id, ms)
    local t = timer(id, "RestartTimer")
    t.ms, t.running, t.due = ms, true, stub.now() + ms / 1000
end
function impl.StopTimer(id) timer(id, "StopTimer").running = false end
function impl.IsTimerElapsed(id) return not timer(id, "IsTimerElapsed").running end
function impl.FreeTimer(id) timer(id, "FreeTimer").freed = true end

function impl.GetName(pid) local c = client(pid) return c and c.name or "" end
function impl.Kick(pid) end
function impl.GetCell(pid) local c = client(pid) return c and c.cell or nil end
local function exteriorXY(cell)
    local x, y = (cell or ""):match("^(%-?%d+), (%-?%d+)$")
    return tonumber(x), tonumber(y)
end
function impl.IsInExterior(pid) local c = client(pid) return c ~= nil and exteriorXY(c.cell) ~= nil end
function impl.GetExteriorX(pid) local c = client(pid) return c and select(1, exteriorXY(c.cell)) or 0 end
function impl.GetExteriorY(pid) local c = client(pid) return c and select(2, exteriorXY(c.cell)) or 0 end
function impl.GetRegion(pid) local c = client(pid) return c and c.region or "" end
function impl.IsChangingRegion(pid) return false end
for _, axis in ipairs({ "X", "Y", "Z" }) do
    impl["GetPos" .. axis] = function(pid) local c = client(pid) return c and c.pos[axis:lower()] or 0 end
end
function impl.GetRotX(pid) local c = client(pid) return c and c.rot.x or 0 end
function impl.GetRotZ(pid) local c = client(pid) return c and c.rot.z or 0 end
function impl.SetCell(pid, cell) local c = client(pid) if c then c.pendingCell = cell end end
function impl.SetExteriorCell(pid, x, y) impl.SetCell(pid, x .. ", " .. y) end
function impl.SetPos(pid, x, y, z) local c = client(pid) if c then c.pendingPos = { x = x, y = y, z = z } end end
function impl.SetRot(pid, x, z) local c = client(pid) if c then c.pendingRot = { x = x, z = z } end end
function impl.SendCell(pid)
    local c = client(pid)
    if c and c.pendingCell and stub.clientEcho then
        deferred[#deferred + 1] = { pid = pid, cell = c.pendingCell }
    end
end
function impl.SendPos(pid)
    local c = client(pid)
    if c and c.pendingPos then c.pos = c.pendingPos end
    if c and c.pendingRot then c.rot = c.pendingRot end
end

function impl.ClearInventoryChanges() end
function impl.SetInventoryChangesAction() end
function impl.AddItemChange() end
function impl.SendInventoryChanges() end
function impl.ClearJournalChanges() end
function impl.AddJournalEntry() end
function impl.AddJournalEntryWithTimestamp() end
function impl.AddJournalIndex() end
function impl.SendJournalChanges() end

function impl.GetLevel(pid) local c = client(pid) return c and c.level or 0 end
function impl.SetLevel(pid, v) local c = client(pid) if c then c.level = v end end
function impl.SendLevel() end
for _, stat in ipairs({ "Health", "Magicka", "Fatigue" }) do
    for _, part in ipairs({ "Base", "Current" }) do
        local key = stat:lower() .. part
        impl["Get" .. stat .. part] = function(pid) local c = client(pid) return c and c.stats[key] or 0 end
        impl["Set" .. stat .. part] = function(pid, v) local c = client(pid) if c then c.stats[key] = v end end
    end
end
function impl.SendStatsDynamic() end
function impl.GetAttributeCount() return #ATTRIBUTES end
function impl.GetSkillCount() return #SKILLS end
function impl.GetAttributeId(name) return indexOf(ATTRIBUTES, name) end
function impl.GetSkillId(name) return indexOf(SKILLS, name) end
function impl.GetAttributeName(id) return ATTRIBUTES[id + 1] or "" end
function impl.GetSkillName(id) return SKILLS[id + 1] or "" end
function impl.GetAttributeBase(pid, id) local c = client(pid) return c and c.attributes[id] or 0 end
function impl.SetAttributeBase(pid, id, v) local c = client(pid) if c then c.attributes[id] = v end end
function impl.SendAttributes() end
function impl.GetSkillBase(pid, id) local c = client(pid) return c and c.skills[id] or 0 end
function impl.SetSkillBase(pid, id, v) local c = client(pid) if c then c.skills[id] = v end end
function impl.SendSkills() end

function impl.SendMessage() end
function impl.MessageBox() end

function impl.ClearObjectList() end
function impl.SetObjectListPid() end
function impl.SetObjectListCell() end
function impl.SetObjectListConsoleCommand() end
function impl.SetPlayerAsObject() end
function impl.AddObject() end
function impl.SendConsoleCommand() end

function impl.ReadCellActorList(cell)
    readActors = {}
    for i, a in ipairs(stub.cellActors[cell] or {}) do readActors[i] = a end
end
function impl.GetActorListSize() return #readActors end
local function actor(i, name)
    local a = readActors[i + 1]
    if a == nil then
        stub.abort(string.format("tes3mp.%s(%d): index past the actor list (size %d)", name, i, #readActors))
    end
    return a
end
function impl.GetActorRefId(i) return actor(i, "GetActorRefId").refId end
function impl.GetActorRefNum(i) return actor(i, "GetActorRefNum").refNum end
function impl.GetActorMpNum(i) return actor(i, "GetActorMpNum").mpNum end
function impl.GetActorPosX(i) return actor(i, "GetActorPosX").x end
function impl.GetActorPosY(i) return actor(i, "GetActorPosY").y end
function impl.GetActorPosZ(i) return actor(i, "GetActorPosZ").z end
function impl.DoesActorHavePosition(i) return actor(i, "DoesActorHavePosition").x ~= nil end
function impl.DoesActorHaveStatsDynamic(i) return actor(i, "DoesActorHaveStatsDynamic").health ~= nil end
function impl.GetActorHealthCurrent(i) return actor(i, "GetActorHealthCurrent").health or 0 end

function impl.LogMessage(level, text)
    if stub.printLog then io.stderr:write("[log ", level, "] ", text, "\n") end
end
function impl.LogAppend(level, text) impl.LogMessage(level, text) end

local function binding(name, sig, fn)
    return function(...)
        local n = select("#", ...)
        local args = { ... }
        checkArgs(name, sig, args, n)
        local list = {}
        for i = 1, n do list[i] = args[i] end
        setmetatable(list, stub.ARRAY)
        record(name, list)
        return fn(...)
    end
end

local function makeApi()
    local api = {}
    for name, sig in pairs(SIGNATURES) do
        local fn = impl[name]
        if fn == nil then error("tes3mp_stub: no implementation for " .. name) end
        api[name] = binding(name, sig, fn)
    end
    return setmetatable(api, {
        __index = function(_, name)
            stub.abort("tes3mp." .. tostring(name) .. " is not a function this stub knows")
        end,
    })
end

----------------------------------------------------------------------------------------------
-- CoreScripts globals
----------------------------------------------------------------------------------------------

local function makeEventHooks()
    local hooks = { validators = {}, handlers = {} }
    function hooks.makeEventStatus(validDefaultHandler, validCustomHandlers)
        return { validDefaultHandler = validDefaultHandler, validCustomHandlers = validCustomHandlers }
    end
    function hooks.updateEventStatus(old, new)
        if new == nil then return old end
        local out = {}
        if new.validDefaultHandler ~= nil then out.validDefaultHandler = new.validDefaultHandler
        else out.validDefaultHandler = old.validDefaultHandler end
        if new.validCustomHandlers ~= nil then out.validCustomHandlers = new.validCustomHandlers
        else out.validCustomHandlers = old.validCustomHandlers end
        return out
    end
    function hooks.registerValidator(event, fn)
        hooks.validators[event] = hooks.validators[event] or {}
        table.insert(hooks.validators[event], fn)
    end
    function hooks.registerHandler(event, fn)
        hooks.handlers[event] = hooks.handlers[event] or {}
        table.insert(hooks.handlers[event], fn)
    end
    function hooks.triggerValidators(event, args)
        local status = hooks.makeEventStatus(true, true)
        for _, fn in ipairs(hooks.validators[event] or {}) do
            status = hooks.updateEventStatus(status, fn(status, unpack(args)))
        end
        return status
    end
    function hooks.triggerHandlers(event, status, args)
        for _, fn in ipairs(hooks.handlers[event] or {}) do
            status = hooks.updateEventStatus(status, fn(status, unpack(args)))
        end
    end
    return hooks
end

local inventoryHelper = {}
function inventoryHelper.getItemIndex(inv, refId, charge, enchantmentCharge, soul)
    for i, item in pairs(inv) do
        if item.refId == refId and item.equipmentIndex == nil
            and (soul == nil or item.soul == soul)
            and (charge == nil or floor(item.charge) == floor(charge))
            and (enchantmentCharge == nil or floor(item.enchantmentCharge) == floor(enchantmentCharge)) then
            return i
        end
    end
    return nil
end
function inventoryHelper.containsItem(inv, refId, charge, enchantmentCharge, soul)
    for _, item in pairs(inv) do
        if item.refId == refId and (soul == nil or item.soul == soul)
            and (charge == nil or floor(item.charge) == floor(charge))
            and (enchantmentCharge == nil or floor(item.enchantmentCharge) == floor(enchantmentCharge)) then
            return true
        end
    end
    return false
end
function inventoryHelper.addItem(inv, refId, count, charge, enchantmentCharge, soul)
    local i = inventoryHelper.getItemIndex(inv, refId, charge, enchantmentCharge, soul)
    if i then
        inv[i].count = inv[i].count + count
    else
        table.insert(inv, { refId = refId, count = count, charge = charge,
            enchantmentCharge = enchantmentCharge, soul = soul })
    end
end
-- Like CoreScripts: stacks that run out become nil holes in the array.
function inventoryHelper.removeClosestItem(inv, refId, count)
    local remaining = count
    for i, item in pairs(inv) do
        if remaining <= 0 then break end
        if item.refId == refId then
            item.count = item.count - remaining
            if item.count < 1 then
                remaining = -item.count
                inv[i] = nil
            else
                remaining = 0
            end
        end
    end
end
inventoryHelper.removeItem = inventoryHelper.removeClosestItem

local Player = {}
Player.__index = Player

function Player:IsLoggedIn() return self.loggedIn end
function Player:Message(text) tes3mp.SendMessage(self.pid, text, false) end
function Player:QuicksaveToDrive()
    record("Player:QuicksaveToDrive", setmetatable({ self.pid }, stub.ARRAY))
end
function Player:LoadItemChanges(itemArray, action)
    tes3mp.ClearInventoryChanges(self.pid)
    tes3mp.SetInventoryChangesAction(self.pid, action)
    for _, item in pairs(itemArray) do
        if item.count > 0 then
            tes3mp.AddItemChange(self.pid, item.refId, item.count, item.charge,
                item.enchantmentCharge, item.soul)
        end
    end
    tes3mp.SendInventoryChanges(self.pid)
end

local function newPlayer(pid, name, cell)
    local attributes, skills = {}, {}
    for _, a in ipairs(ATTRIBUTES) do attributes[a] = { base = 40, damage = 0, skillIncrease = 0 } end
    for _, s in ipairs(SKILLS) do skills[s] = { base = 15, damage = 0, progress = 0 } end
    return setmetatable({
        pid = pid, name = name, accountName = name, loggedIn = false, consoleCommandsQueued = {},
        data = {
            location = { cell = cell, posX = 0, posY = 0, posZ = 0, rotX = 0, rotZ = 0, regionName = "" },
            stats = { level = 1, healthBase = 50, healthCurrent = 50, magickaBase = 80, magickaCurrent = 80,
                fatigueBase = 120, fatigueCurrent = 120 },
            inventory = { { refId = "gold_001", count = 120, charge = -1, enchantmentCharge = -1, soul = "" } },
            attributes = attributes, skills = skills, journal = {},
        },
    }, Player)
end

local function makeLogicHandler()
    local lh = {}
    function lh.RunConsoleCommandOnPlayer(pid, consoleCommand, forEveryone)
        record("logicHandler.RunConsoleCommandOnPlayer", setmetatable({ pid, consoleCommand }, stub.ARRAY))
        tes3mp.ClearObjectList()
        tes3mp.SetObjectListPid(pid)
        tes3mp.SetObjectListCell(Players[pid].data.location.cell)
        tes3mp.SetObjectListConsoleCommand(consoleCommand)
        tes3mp.SetPlayerAsObject(pid)
        tes3mp.AddObject()
        table.insert(Players[pid].consoleCommandsQueued, consoleCommand)
        tes3mp.SendConsoleCommand(forEveryone)
    end
    function lh.GetConnectedPlayerCount()
        local n = 0
        for _, p in pairs(Players) do if p:IsLoggedIn() then n = n + 1 end end
        return n
    end
    function lh.GetChatName(pid) return Players[pid].name .. " (" .. pid .. ")" end
    return lh
end

--- Put the fake server in the globals, as serverCore.lua would before loading custom scripts.
function stub.install()
    _G.tes3mp = makeApi()
    _G.customEventHooks = makeEventHooks()
    _G.logicHandler = makeLogicHandler()
    _G.inventoryHelper = inventoryHelper
    _G.Players = {}
    _G.LoadedCells = {}
    _G.enumerations = {
        log = { VERBOSE = 0, INFO = 1, WARN = 2, ERROR = 3, FATAL = 4 },
        inventory = { SET = 0, ADD = 1, REMOVE = 2 },
        journal = { ENTRY = 0, INDEX = 1 },
    }
    _G.config = {
        shareJournal = true,
        defaultRespawn = { cellDescription = "Balmora, Temple", position = { 4700.567, 3874.742, 14758.99 },
            rotation = { 0.2531, 1.5706 } },
    }
    _G.color = { White = "#FFFFFF", Error = "#FF0000", Yellow = "#FFFF00" }
    _G.time = { seconds = function(n) return n * 1000 end }
    _G.WorldInstance = {
        data = { time = { hour = 13.5, day = 16, month = 7, year = 427, daysPassed = 1, timeScale = 30 },
            journal = {} },
        storedRegions = {},
        QuicksaveToDrive = function() record("WorldInstance:QuicksaveToDrive", setmetatable({}, stub.ARRAY)) end,
    }
    return stub
end

----------------------------------------------------------------------------------------------
-- Driving the fake server
----------------------------------------------------------------------------------------------

--- Fire a hook the way eventHandler.lua does. `default` runs when validDefaultHandler holds.
function stub.fire(event, args, default)
    local status = customEventHooks.triggerValidators(event, args)
    if status.validDefaultHandler and default then default() end
    customEventHooks.triggerHandlers(event, status, args)
    return status
end

function stub.serverInit()
    tes3mp.GetServerVersion()
    stub.fire("OnServerInit", {})
    stub.fire("OnServerPostInit", {})
end

function stub.serverExit()
    customEventHooks.triggerHandlers("OnServerExit", customEventHooks.makeEventStatus(true, true), { false })
end

local function ensureCell(cell)
    LoadedCells[cell] = LoadedCells[cell] or { description = cell, visitors = {},
        data = { objectData = {}, packets = { actorList = {} } } }
end

--- A client connects and logs in. Returns its pid (the lowest free one, as pids are reused).
function stub.join(name, cell)
    cell = cell or "Seyda Neen, Census and Excise Office"
    local pid = 0
    while stub.clients[pid] do pid = pid + 1 end
    stub.clients[pid] = {
        name = name, cell = cell, region = "", pos = { x = 0, y = 0, z = 0 }, rot = { x = 0, z = 0 },
        level = 1, attributes = {}, skills = {},
        stats = { healthBase = 50, healthCurrent = 50, magickaBase = 80, magickaCurrent = 80,
            fatigueBase = 120, fatigueCurrent = 120 },
    }
    ensureCell(cell)
    Players[pid] = newPlayer(pid, name, cell)
    stub.fire("OnPlayerConnect", { pid })
    Players[pid].loggedIn = true
    stub.fire("OnPlayerAuthentified", { pid })
    return pid
end

function stub.leave(pid)
    if Players[pid] == nil then return false end
    customEventHooks.triggerHandlers("OnPlayerDisconnect", customEventHooks.makeEventStatus(true, true), { pid })
    Players[pid] = nil
    stub.clients[pid] = nil
    return true
end

--- The client reports a new cell (walking through a door, or after a server SendCell).
function stub.moveTo(pid, cell)
    local c = client(pid)
    if c == nil or Players[pid] == nil then return false end
    c.cell = cell
    ensureCell(cell)
    local previous = Players[pid].data.location.cell
    local packet = { location = { cell = cell, posX = c.pos.x, posY = c.pos.y, posZ = c.pos.z,
        rotX = c.rot.x, rotZ = c.rot.z } }
    stub.fire("OnPlayerCellChange", { pid, packet, previous }, function()
        local loc = Players[pid].data.location
        loc.cell, loc.posX, loc.posY, loc.posZ = cell, c.pos.x, c.pos.y, c.pos.z
        loc.rotX, loc.rotZ = c.rot.x, c.rot.z
    end)
    return true
end

function stub.setPosition(pid, x, y, z)
    local c = client(pid)
    if c == nil then return false end
    c.pos = { x = x, y = y, z = z }
    return true
end

--- The client's journal gained an entry (OnPlayerJournal with the packet).
function stub.journalUpdate(pid, quest, index)
    if Players[pid] == nil then return false end
    local item = { type = 0, index = index, quest = quest, actorRefId = "player" }
    stub.fire("OnPlayerJournal", { pid, { journal = { item } } }, function()
        local list = config.shareJournal and WorldInstance.data.journal or Players[pid].data.journal
        table.insert(list, item)
    end)
    return true
end

--- A chat line typed by the player; returns the eventStatus CoreScripts would act on.
function stub.chat(pid, message)
    if Players[pid] == nil then return nil end
    return stub.fire("OnPlayerSendMessage", { pid, message }, function()
        if message:sub(1, 1) == "/" then
            record("commandHandler.ProcessCommand", setmetatable({ pid, message }, stub.ARRAY))
            tes3mp.SendMessage(pid, color.Error .. "Not a valid command. Type /help for more info.\n", false)
        else
            tes3mp.SendMessage(pid, color.White .. logicHandler.GetChatName(pid) .. ": " .. message .. "\n", true)
        end
    end)
end

function stub.addActor(cell, refId, x, y, z, health)
    stub.cellActors[cell] = stub.cellActors[cell] or {}
    local list = stub.cellActors[cell]
    list[#list + 1] = { refId = refId, refNum = 1000 + #list, mpNum = 0, x = x, y = y, z = z, health = health }
    ensureCell(cell)
end

--- One pass of the server's main loop: client echoes, then due timers (one-shot).
function stub.step()
    local echoes = deferred
    deferred = {}
    for _, e in ipairs(echoes) do
        if stub.clients[e.pid] and Players[e.pid] then
            stub.clients[e.pid].pendingCell = nil
            stub.moveTo(e.pid, e.cell)
        end
    end
    local ids = {}
    for id in pairs(stub.timers) do ids[#ids + 1] = id end
    table.sort(ids)
    local t = stub.now()
    for _, id in ipairs(ids) do
        local tm = stub.timers[id]
        if tm.running and not tm.freed and t >= tm.due then
            tm.running = false -- one-shot: ended before the callback runs
            local fn = rawget(_G, tm.name)
            if type(fn) ~= "function" then
                stub.abort("timer callback " .. tm.name .. " is not a global function")
            end
            inTimerCallback = true
            fn(unpack(tm.args)) -- errors propagate: the real server would crash here too
            inTimerCallback = false
        end
    end
end

return stub
