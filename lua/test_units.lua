--[[
test_units.lua: unit tests for timmy_bridge.lua's JSON codec, line buffer and send queue,
its argument checks (no socket value may reach a tes3mp.* call with a wrong type), and the
stub's own server behaviour (type aborts, one-shot timers, validators).

    luajit lua/test_units.lua        -- prints one line per test, exits 1 on any failure
]]

local dir = (arg and arg[0] or ""):match("^(.*)[/\\][^/\\]*$") or "."
local stub = dofile(dir .. "/tes3mp_stub.lua")
stub.install()
-- allowConsole: the console action is off by default; these tests exercise its arguments.
package.preload["custom/timmy_bridge_config"] = function() return { listenPort = 0, allowConsole = true } end
local M = dofile(dir .. "/timmy_bridge.lua")
assert(M.enabled, "the script did not start (is lua-socket installed?)")
local json, LineBuffer, OutQueue = M.json, M.LineBuffer, M.OutQueue

local passed, failed = 0, 0
local function test(name, fn)
    local ok, err = xpcall(fn, debug.traceback)
    if ok then
        passed = passed + 1
        print("ok   " .. name)
    else
        failed = failed + 1
        print("FAIL " .. name .. "\n" .. tostring(err))
    end
end

local function show(v)
    if type(v) == "string" then return string.format("%q", v) end
    if type(v) == "table" and v ~= json.null then return json.encode(v) end
    return tostring(v)
end

local function eq(a, b, what)
    if a ~= b then error((what or "values") .. ": expected " .. show(b) .. ", got " .. show(a), 2) end
end

local function deepEq(a, b)
    if a == b then return true end
    if type(a) ~= "table" or type(b) ~= "table" then
        return type(a) == "number" and type(b) == "number" and math.abs(a - b) <= 1e-12 * math.max(1, math.abs(a))
    end
    for k, v in pairs(a) do if not deepEq(v, b[k]) then return false end end
    for k in pairs(b) do if a[k] == nil then return false end end
    return true
end

----------------------------------------------------------------------------------------------
-- JSON
----------------------------------------------------------------------------------------------

test("json encodes scalars", function()
    eq(json.encode(nil), "null")
    eq(json.encode(json.null), "null")
    eq(json.encode(true), "true")
    eq(json.encode(false), "false")
    eq(json.encode(0), "0")
    eq(json.encode(-0.0), "0")
    eq(json.encode(42), "42")
    eq(json.encode(-7), "-7")
    eq(json.encode(1.5), "1.5")
    eq(json.encode(0.1), "0.1")
    eq(json.encode(4700.567), "4700.567")
    eq(json.encode(2 ^ 53), "9007199254740992")
    eq(json.encode(1e300), "1e+300")
    eq(json.encode(0 / 0), "null")
    eq(json.encode(math.huge), "null")
    eq(tonumber(json.encode(1 / 3)), 1 / 3, "1/3 round trip")
end)

test("json escapes strings and keeps output valid UTF-8", function()
    eq(json.encode('a"b\\c'), '"a\\"b\\\\c"')
    eq(json.encode("\n\r\t\b\f"), '"\\n\\r\\t\\b\\f"')
    eq(json.encode("\0\1\31\127"), '"\\u0000\\u0001\\u001f\\u007f"')
    eq(json.encode("/"), '"/"')
    eq(json.encode("é😀"), '"é😀"', "valid UTF-8 passes")
    eq(json.encode("\226\128\168"), '"\\u2028"', "U+2028 is escaped")
    eq(json.encode("a\255b"), '"a\239\191\189b"', "a stray byte becomes U+FFFD")
    eq(json.encode("\192\175"), '"\239\191\189\239\191\189"', "overlong encoding rejected")
    eq(json.encode("\237\160\128"), '"\239\191\189\239\191\189\239\191\189"', "UTF-8 surrogate rejected")
    eq(json.encode("\240\159\152"), '"\239\191\189\239\191\189\239\191\189"', "truncated sequence")
    assert(not json.encode(string.rep("x\n", 100)):find("\n", 1, true), "no raw newline")
end)

test("json encodes arrays and objects", function()
    eq(json.encode(json.array()), "[]")
    eq(json.encode({}), "{}")
    eq(json.encode(json.object()), "{}")
    eq(json.encode({ 1, 2, 3 }), "[1,2,3]")
    eq(json.encode({ a = json.array({ 1, { b = json.null } }) }), '{"a":[1,{"b":null}]}')
    eq(json.encode({ json.null, 2 }), "[null,2]")
    eq(json.encode({ zeta = 1, type = "pong", alpha = 2, id = 7 }), '{"type":"pong","id":7,"alpha":2,"zeta":1}',
        "type and id first, then sorted")
    local ok = pcall(json.encode, { f = print })
    assert(not ok, "a function cannot be encoded")
    local cyc = {}
    cyc.self = cyc
    ok = pcall(json.encode, cyc)
    assert(not ok, "a cycle is refused")
end)

test("json decodes numbers by the grammar", function()
    local good = { ["0"] = 0, ["-0"] = 0, ["12"] = 12, ["-3.25"] = -3.25, ["1e3"] = 1000,
        ["1E-2"] = 0.01, ["2.5e+1"] = 25, ["9007199254740993"] = 9007199254740992 }
    for text, want in pairs(good) do eq(json.decode(text), want, text) end
    for _, text in ipairs({ "01", "1.", ".5", "+1", "1e", "1e+", "-", "--1", "0x10", "1.5.2", "Infinity", "NaN", "1e999" }) do
        local v, err = json.decode(text)
        assert(v == nil and err, "should refuse " .. text .. ", got " .. show(v))
    end
end)

test("json decodes strings with escapes and surrogate pairs", function()
    eq(json.decode('"a\\"b\\\\c\\/d"'), 'a"b\\c/d')
    eq(json.decode('"\\n\\r\\t\\b\\f"'), "\n\r\t\b\f")
    eq(json.decode('"\\u0041\\u00e9\\u20AC"'), "Aé€")
    eq(json.decode('"\\ud83d\\ude00"'), "😀", "surrogate pair")
    eq(json.decode('"\\uD834\\uDD1E"'), "𝄞", "upper-case hex pair")
    eq(json.decode('"\\ud83d"'), "\239\191\189", "lone high surrogate")
    eq(json.decode('"\\ude00x"'), "\239\191\189x", "lone low surrogate")
    eq(json.decode('"\\ud83d\\u0041"'), "\239\191\189A", "high surrogate then a normal escape")
    eq(json.decode('"é😀"'), "é😀", "raw UTF-8")
    for _, bad in ipairs({ '"abc', '"a\nb"', '"\\x"', '"\\u12"', '"\\u12g4"', '"\1"' }) do
        local v, err = json.decode(bad)
        assert(v == nil and err, "should refuse " .. bad)
    end
end)

test("json decodes structures, nulls and whitespace", function()
    local v = json.decode(' { "a" : [ 1 , true , null , { "b" : "c" } ] , "n" : null , "e" : {} , "z" : [] } ')
    eq(v.a[1], 1)
    eq(v.a[2], true)
    eq(v.a[3], json.null, "null in an array is kept as json.null")
    eq(v.a[4].b, "c")
    eq(v.n, nil, "a null member is absent")
    eq(json.encode(v.e), "{}", "empty object stays an object")
    eq(json.encode(v.z), "[]", "empty array stays an array")
    eq(json.decode("null"), json.null)
    eq(json.decode("true"), true)
    eq(json.decode('{"k":1,"k":2}').k, 2, "last duplicate wins")
    for _, bad in ipairs({ "", " ", "{", "[1,]", "{\"a\"}", "{\"a\":1,}", "{} x", "[1] [2]", "nul", "tru",
        "{a:1}", "['a']", "\239\187\191{}" }) do
        local r, err = json.decode(bad)
        assert(r == nil and err, "should refuse " .. show(bad))
    end
end)

test("json refuses nesting past the limit instead of overflowing the stack", function()
    eq(type(json.decode(string.rep("[", 60) .. string.rep("]", 60))), "table")
    local r, err = json.decode(string.rep("[", 30000) .. string.rep("]", 30000))
    assert(r == nil and err:find("deep"), "deep nesting refused: " .. tostring(err))
end)

test("json round-trips random values", function()
    math.randomseed(878)
    local function gen(depth)
        local k = math.random(1, depth > 3 and 4 or 6)
        if k == 1 then return math.random(-1e6, 1e6) end
        if k == 2 then return math.random() * 1e4 - 5e3 end
        if k == 3 then
            local t = {}
            for i = 1, math.random(0, 12) do
                local c = math.random(0, 0x10FFFF)
                if c >= 0xD800 and c <= 0xDFFF then c = 0x41 end
                t[i] = (c < 128) and string.char(c)
                    or json.decode(string.format('"\\u%04x"', c < 0x10000 and c or 0x41))
            end
            return table.concat(t)
        end
        if k == 4 then return math.random() < 0.5 end
        if k == 5 then
            local a = json.array()
            for i = 1, math.random(0, 5) do a[i] = gen(depth + 1) end
            return a
        end
        local o = json.object()
        for _ = 1, math.random(0, 5) do o["k" .. math.random(1, 100)] = gen(depth + 1) end
        return o
    end
    for i = 1, 500 do
        local v = gen(0)
        local text = json.encode(v)
        local back, err = json.decode(text)
        assert(back ~= nil, "decode failed for " .. text .. ": " .. tostring(err))
        assert(deepEq(back, v), "round trip " .. i .. " differs: " .. text .. " vs " .. json.encode(back))
    end
end)

----------------------------------------------------------------------------------------------
-- LineBuffer
----------------------------------------------------------------------------------------------

local function drain(lb)
    local out = {}
    while true do
        local line, err = lb:pop()
        if line then out[#out + 1] = line
        elseif err then out[#out + 1] = "<" .. err .. ">"
        else break end
    end
    return out
end

-- Feed `chunks` one after another, draining after each, and return every line seen.
local function feed(max, chunks)
    local lb, out = LineBuffer.new(max), {}
    for _, c in ipairs(chunks) do
        lb:push(c)
        for _, l in ipairs(drain(lb)) do out[#out + 1] = l end
    end
    return out, lb
end

local function everySplit(max, input, want)
    local whole = feed(max, { input })
    eq(table.concat(whole, "|"), table.concat(want, "|"), "whole input")
    for i = 0, #input do
        local got = feed(max, { input:sub(1, i), input:sub(i + 1) })
        eq(table.concat(got, "|"), table.concat(want, "|"), "split at byte " .. i)
    end
    local bytes = {}
    for i = 1, #input do bytes[i] = input:sub(i, i) end
    eq(table.concat(feed(max, bytes), "|"), table.concat(want, "|"), "byte by byte")
end

test("line buffer splits lines at every byte boundary, with CRLF and empty lines", function()
    everySplit(64, '{"a":1}\n{"b":2}\r\n\n{"c":3}\n', { '{"a":1}', '{"b":2}', "", '{"c":3}' })
end)

test("line buffer keeps a partial line until its newline arrives", function()
    local lb = LineBuffer.new(64)
    lb:push('{"type":"pi')
    eq(lb:pop(), nil)
    eq(lb:pending(), 11)
    lb:push('ng"}\n{"x"')
    eq(lb:pop(), '{"type":"ping"}')
    eq(lb:pop(), nil)
    lb:push(":1}\n")
    eq(lb:pop(), '{"x":1}')
    eq(lb:pending(), 0)
end)

test("line buffer reports a too long line once and lives on", function()
    everySplit(8, "123456789\nok\n", { "<too_long>", "ok" })
    everySplit(8, "12345678\r\nok\n", { "12345678", "ok" })
    everySplit(8, "12345678\n", { "12345678" })
    everySplit(8, "1234567890123456789\n12\n", { "<too_long>", "12" })
end)

test("line buffer does not hold the bytes of a line it is discarding", function()
    local lb = LineBuffer.new(16)
    local seen = {}
    for _ = 1, 100 do
        lb:push(string.rep("x", 1000))
        for _, l in ipairs(drain(lb)) do seen[#seen + 1] = l end
        assert(lb:pending() <= 1017, "buffer grew to " .. lb:pending())
    end
    lb:push("tail\nnext\n")
    for _, l in ipairs(drain(lb)) do seen[#seen + 1] = l end
    eq(table.concat(seen, "|"), "<too_long>|next")
end)

----------------------------------------------------------------------------------------------
-- OutQueue
----------------------------------------------------------------------------------------------

-- A non-blocking socket that takes at most `take` bytes per send, like a full kernel buffer.
local function slowSocket(take)
    local s = { got = {}, take = take }
    function s:send(data, i)
        i = i or 1
        local j = math.min(#data, i + self.take - 1)
        self.got[#self.got + 1] = data:sub(i, j)
        if j < #data then return nil, "timeout", j end
        return j
    end
    return s
end

test("send queue resends the unsent tail of partial sends", function()
    for take = 1, 9 do
        local q = OutQueue.new(1000)
        local want = {}
        for i = 1, 5 do
            local line = '{"n":' .. i .. ',"pad":"' .. string.rep("p", i * 3) .. '"}\n'
            assert(q:push(line))
            want[#want + 1] = line
        end
        local sock = slowSocket(take)
        local rounds = 0
        while not q:empty() do
            assert(q:flush(sock))
            rounds = rounds + 1
            assert(rounds < 10000)
        end
        eq(table.concat(sock.got), table.concat(want), "bytes on the wire (take " .. take .. ")")
        eq(q.bytes, 0, "queued bytes")
    end
end)

test("send queue refuses what would pass its cap and reports a closed socket", function()
    local q = OutQueue.new(10)
    assert(q:push("12345"))
    assert(q:push("67890"))
    assert(not q:push("x"), "over the cap")
    local closed = { send = function() return nil, "closed", 0 end }
    local ok, err = q:flush(closed)
    assert(ok == nil and err == "closed")
end)

test("send queue counts a timeout that sent nothing", function()
    local q = OutQueue.new(100)
    q:push("abc\n")
    local stuck = { send = function(_, _, i) return nil, "timeout", i - 1 end }
    assert(q:flush(stuck))
    eq(q.bytes, 4)
    local sock = slowSocket(100)
    assert(q:flush(sock))
    eq(table.concat(sock.got), "abc\n")
end)

----------------------------------------------------------------------------------------------
-- The protocol on one link: wrong types never reach a tes3mp.* call
----------------------------------------------------------------------------------------------

-- A socket that records what the script writes.
local function memorySocket()
    local s = { out = "" }
    function s:send(data, i) self.out = self.out .. data:sub(i or 1); return #data end
    function s:receive() return nil, "timeout", "" end
    function s:close() end
    return s
end

local function exchange(link, sock, msg)
    sock.out = ""
    M._handleLine(link, type(msg) == "string" and msg or json.encode(msg))
    assert(link.out:flush(sock))
    local answers = {}
    for line in sock.out:gmatch("[^\n]+") do answers[#answers + 1] = assert(json.decode(line)) end
    return answers
end

local alice = stub.join("Alice", "Balmora, Temple")
local sock = memorySocket()
local link = M._newLink(sock, "test", false)

local GOOD = {
    teleport = { cell = "Balmora, Temple", pos = { x = 1, y = 2, z = 3 }, rot = { x = 0, z = 1 } },
    add_item = { ref_id = "gold_001", count = 2, charge = 5, soul = "" },
    remove_item = { ref_id = "gold_001", count = 1 },
    journal = { quest = "a1_1_findspymaster", index = 10, actor_ref_id = "caius cosades" },
    set_stat = { name = "Long Blade", value = 50 },
    console = { command = "tgm" },
    message = { text = "hello", to = "Alice" },
}
local BAD = { 5, -1, 1.5, 1e300, -1e300, "", "x", "a\0b", "two\nlines", true, false,
    json.object(), json.array({ 1 }), string.rep("a", 5000), { x = "a", y = {}, z = true } }

test("every good act succeeds", function()
    for action, args in pairs(GOOD) do
        local a = exchange(link, sock, { type = "act", id = "g-" .. action, action = action, args = args })
        eq(#a, 1, action .. " answers once")
        eq(a[1].type, "result")
        eq(a[1].id, "g-" .. action)
        if not a[1].ok then error(action .. " failed: " .. tostring(a[1].error)) end
    end
end)

test("wrong types in any act argument answer ok:false and never abort the server", function()
    local n = 0
    for action, args in pairs(GOOD) do
        for key in pairs(args) do
            for _, bad in ipairs(BAD) do
                local copy = {}
                for k, v in pairs(args) do copy[k] = v end
                copy[key] = bad
                n = n + 1
                local a = exchange(link, sock, { type = "act", id = n, action = action, args = copy })
                eq(#a, 1, "one answer")
                eq(a[1].type, "result", action .. "." .. key .. "=" .. show(bad))
                eq(a[1].id, n)
                if not a[1].ok then
                    assert(a[1].code == "bad_args" or a[1].code == "no_player" or a[1].code == "not_found",
                        "code for " .. action .. "." .. key .. "=" .. show(bad) .. ": " .. tostring(a[1].code))
                    assert(type(a[1].error) == "string" and a[1].error ~= "")
                end
            end
        end
    end
    assert(n > 100, "covered " .. n .. " cases")
end)

test("wrong envelope fields answer with a code", function()
    local cases = {
        { { type = "act", id = 1, action = 5, args = {} }, "bad_args" },
        { { type = "act", id = 2, action = "teleport", args = "Balmora" }, "bad_args" },
        { { type = "act", id = 3, action = "teleport", args = json.array({ 1 }) }, "bad_args" },
        { { type = "act", id = 4, action = "teleport", player = 0, args = GOOD.teleport }, "bad_args" },
        { { type = "act", id = 5, action = "teleport", player = "Nobody", args = GOOD.teleport }, "no_player" },
        { { type = "act", id = 6, action = "fly", args = {} }, "unknown_action" },
    }
    for _, c in ipairs(cases) do
        local a = exchange(link, sock, c[1])
        eq(a[1].ok, false)
        eq(a[1].code, c[2], "code for id " .. c[1].id)
    end
    local errors = {
        { "not json", "bad_json" }, { "[1,2]", "bad_json" }, { '"str"', "bad_json" },
        { '{"id":1}', "missing_field" }, { '{"type":7}', "bad_field" },
        { '{"type":"act","id":{"a":1},"action":"x"}', "bad_field" },
        { '{"type":"act","id":1.5,"action":"x"}', "bad_field" },
        { '{"type":"act","action":"teleport","args":{}}', "missing_field" },
        { '{"type":"warp","id":9}', "unknown_type" },
        { '{"type":"act","id":10,"protocol_version":"2.0","action":"teleport"}', "unsupported_version" },
        { '{"type":"observe","id":11,"player":"Nobody"}', "not_found" },
        { '{"type":"observe","id":12,"player":12}', "bad_field" },
        { '{"type":"speak","text":5}', "bad_field" },
        { '{"type":"say","message":5,"room":"x"}', "bad_field" },
    }
    for _, c in ipairs(errors) do
        local a = exchange(link, sock, c[1])
        eq(#a, 1, "one answer to " .. c[1])
        eq(a[1].type, "error", c[1])
        eq(a[1].code, c[2], c[1])
    end
    eq(#exchange(link, sock, "   "), 0, "an empty line is ignored")
    eq(#exchange(link, sock, '{"type":"speak","text":"hi"}'), 0, "no id, no answer")
    local ok = exchange(link, sock, '{"type":"speak","id":"s1","text":"hi"}')
    eq(#ok, 1, "an id gets one answer")
    eq(json.encode(ok[1]), '{"type":"ok","id":"s1"}')
    ok = exchange(link, sock, '{"type":"say","id":4,"user_id":"u","username":"Carol","room":"Balmora, Temple","message":"hi"}')
    eq(json.encode(ok[1]), '{"type":"ok","id":4}')
    local pong = exchange(link, sock, '{"type":"ping","id":"p"}')
    eq(pong[1].type, "pong")
    eq(pong[1].id, "p")
end)

test("teleport sends SetCell, SetPos, SetRot, SendCell, SendPos in order", function()
    local from = #stub.calls + 1
    local a = exchange(link, sock, { type = "act", id = "t", action = "teleport", args = { cell = "Balmora, Temple" } })
    assert(a[1].ok, tostring(a[1].error))
    local names = {}
    for i = from, #stub.calls do
        local c = stub.calls[i].name
        if c:match("^S[ae][tn]d?[CPR]") then names[#names + 1] = c end
    end
    eq(table.concat(names, ","), "SetCell,SetPos,SetRot,SendCell,SendPos")
    eq(stub.calls[from].args[1], alice)
    eq(stub.calls[from].args[2], "Balmora, Temple")
end)

test("observe answers a perception with the player's state", function()
    stub.addActor("Balmora, Temple", "temple_priest", 4710, 3880, 14758.99, 40)
    stub.addActor("Balmora, Temple", "far_guard", 90000, 3880, 14758.99, 40)
    local p = exchange(link, sock, { type = "observe", id = "o" })[1]
    eq(p.type, "perception")
    eq(p.id, "o")
    eq(p.world, "morrowind")
    eq(p.player, "Alice")
    eq(p.cell, "Balmora, Temple")
    eq(p.stats.health.base, 50)
    eq(type(p.position.x), "number")
    eq(p.players[1], "Alice")
    eq(#p.nearby, 1, "only actors within the radius")
    eq(p.nearby[1].ref_id, "temple_priest")
    eq(p.nearby[1].name, nil, "the server has no display names")
    eq(p.game_hour, 13.5)
end)

----------------------------------------------------------------------------------------------
-- worldEvent, for other TES3MP scripts; the default role
----------------------------------------------------------------------------------------------

test("the default role dials the bridge's line listener at 127.0.0.1:4005", function()
    eq(M.config.role, "connect")
    eq(M.config.bridgeHost, "127.0.0.1")
    eq(M.config.bridgePort, 4005)
end)

test("worldEvent sends a line event on every ready link, with the scope asked for", function()
    local esock = memorySocket()
    local elink = M._newLink(esock, "events", false)
    eq(M.worldEvent("Balmora, Temple", "rain", "Rain."), 0, "no ready link yet: not sent")
    local hi = exchange(elink, esock, { type = "hello", world = "bridge", kind = "bridge", protocol = 1 })
    eq(hi[1].type, "welcome", "hello answered: " .. show(hi))
    local function sent(...)
        esock.out = ""
        local n, err = M.worldEvent(...)
        assert(elink.out:flush(esock))
        local lines = {}
        for line in esock.out:gmatch("[^\n]+") do lines[#lines + 1] = assert(json.decode(line)) end
        return n, err, lines
    end
    local n, err, lines = sent("Balmora, Temple", "rain", "Rain drums on the dome.")
    eq(n, 1, "sent on the ready link: " .. tostring(err))
    eq(#lines, 1)
    assert(deepEq(lines[1], { type = "event", room = "Balmora, Temple", event = "rain",
        message = "Rain drums on the dome." }), "no scope: the bridge's rule decides; got " .. show(lines[1]))
    _, _, lines = sent("Balmora, Temple", "bell", nil, true)
    eq(lines[1].scope, "federation")
    eq(lines[1].message, nil, "no message")
    _, _, lines = sent("Balmora, Temple", "fire", "Only here.", false)
    eq(lines[1].scope, "local")
    for _, bad in ipairs({
        { { nil, "rain" }, "cell is required" },
        { { "", "rain" }, "cell must not be empty" },
        { { "Balmora", 5 }, "kind must be a string" },
        { { "Balmora", "rain", {} }, "message must be a string" },
        { { "Balmora", "rain", "x", "yes" }, "federate must be true, false or nil" },
    }) do
        local args = bad[1]
        n, err, lines = sent(args[1], args[2], args[3], args[4])
        eq(n, nil, bad[2])
        assert(tostring(err):find(bad[2], 1, true), "error " .. show(err) .. " lacks " .. bad[2])
        eq(#lines, 0, "nothing sent for " .. bad[2])
    end
    elink.ready = false
end)

----------------------------------------------------------------------------------------------
-- The stub behaves like the server where the script depends on it
----------------------------------------------------------------------------------------------

local function runLua(code)
    local cmd = string.format("cd %q && luajit -e %q 2>&1; echo \"rc=$?\"", dir, code)
    local p = io.popen(cmd)
    local out = p:read("*a")
    p:close()
    return out, tonumber(out:match("rc=(%d+)%s*$"))
end

test("stub aborts the process on a wrong argument type, even inside pcall", function()
    local out, rc = runLua([[local s = dofile("tes3mp_stub.lua"); s.install();
        pcall(tes3mp.SetCell, 0, nil); print("survived")]])
    eq(rc, 134, "exit code")
    assert(out:find("bad argument #2 to tes3mp.SetCell", 1, true), out)
    assert(not out:find("survived", 1, true), "the process went on: " .. out)
    out, rc = runLua([[local s = dofile("tes3mp_stub.lua"); s.install(); tes3mp.SendMessage("0", "x", false)]])
    eq(rc, 134)
    assert(out:find("bad argument #1 to tes3mp.SendMessage", 1, true), out)
    out, rc = runLua([[local s = dofile("tes3mp_stub.lua"); s.install(); tes3mp.NoSuchCall(1)]])
    eq(rc, 134)
    assert(out:find("not a function this stub knows", 1, true), out)
    out, rc = runLua([[local s = dofile("tes3mp_stub.lua"); s.install(); tes3mp.SetPos(0, 1, 2, 3); print("fine")]])
    eq(rc, 0, "good arguments pass: " .. out)
end)

test("stub timers are one-shot, found by global name, and re-armed only by RestartTimer", function()
    local fired = 0
    _G.StubTestTick = function() fired = fired + 1 end
    local id = tes3mp.CreateTimer("StubTestTick", 0)
    stub.step()
    eq(fired, 0, "not started")
    tes3mp.StartTimer(id)
    stub.step()
    stub.step()
    eq(fired, 1, "fires once")
    tes3mp.RestartTimer(id, 0)
    stub.step()
    eq(fired, 2, "re-armed")
    _G.StubTestTick = nil
    local out, rc = runLua([[local s = dofile("tes3mp_stub.lua"); s.install();
        function Inner() tes3mp.CreateTimer("Inner", 1) end
        tes3mp.StartTimer(tes3mp.CreateTimer("Inner", 0)); s.step()]])
    eq(rc, 134, "a timer created inside a timer callback aborts: " .. out)
end)

test("a validator that returns makeEventStatus(false) swallows a chat line", function()
    local from = #stub.calls + 1
    local status = stub.chat(alice, "/timmy hello")
    eq(status.validDefaultHandler, false)
    for i = from, #stub.calls do
        local c = stub.calls[i]
        assert(c.name ~= "commandHandler.ProcessCommand", "the command handler must not see it")
        assert(not (c.name == "SendMessage" and c.args[3] == true), "nothing is broadcast")
    end
    status = stub.chat(alice, "hello everyone")
    eq(status.validDefaultHandler, true, "other lines pass")
end)

print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
