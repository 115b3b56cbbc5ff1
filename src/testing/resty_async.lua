-- resty.async for tests without nginx (resty_async::testing): a plain
-- LuaJIT state, no ngx.*. A call of a module's function that has to wait
-- drives its runtime right there, blocking the test's thread, until the
-- task finishes or the call times out; then it returns what the function
-- would have returned in nginx.
--
-- The Rust side passes `sys`: sys.connect(path) connects to a runtime's
-- completion socket and returns a handle whose :wait(ms) blocks until a
-- wake-up byte arrives or `ms` pass; sys.now() is a monotonic clock in
-- seconds; sys.abi is the calling convention of raw functions (see
-- src/raw.rs); sys.config.timeout is the call timeout in seconds.

local sys = ...

local type = type
local error = error
local pairs = pairs
local ipairs = ipairs
local select = select
local rawget = rawget
local rawset = rawset
local tostring = tostring
local debug_getinfo = debug.getinfo
local debug_getupvalue = debug.getupvalue
local debug_getmetatable = debug.getmetatable
local now = sys.now
local config = sys.config


local _M = { version = "testing" }

-- One state per runtime (one per Rust library), keyed by the library id.
local states = {}

-- results[id] of a task whose results stay in Rust, for rt.take(id).
local TAKE = {}


-- Hands over one finished task: `id, value` (its one result) or `-id, nil`
-- (rt.take(id) has its results).
local function finished(st, id, v)
    if id > 0 then
        st.results[id] = v
    else
        st.results[-id] = TAKE
    end
end


local function dispatch_pairs(st, ...)
    local n = select("#", ...)
    local t = { ... }
    for i = 1, n, 2 do
        finished(st, t[i], t[i + 1])
    end
    return n
end


-- What rt.poll(arm) returns (see src/raw.rs): next_ms, rearm, nstr, n and
-- the pairs (in a table when n < 0); rt.strings() has nstr more pairs.
local function dispatch(st, next_ms, _, nstr, n, ...)
    if n >= 0 then
        dispatch_pairs(st, ...)
    else
        local t = (...)
        for i = 1, -n, 2 do
            finished(st, t[i], t[i + 1])
        end
    end
    while nstr > 0 do
        local got = dispatch_pairs(st, st.rt.strings())
        if got == 0 then
            break
        end
        nstr = nstr - got / 2
    end
    return next_ms
end


-- Runs the runtime of `st` until task `id` finishes (or `timeout` seconds
-- pass: then the task is cancelled); returns its results.
local function wait(st, id, timeout)
    local rt = st.rt
    local results = st.results
    local deadline = now() + timeout
    while true do
        local next_ms = dispatch(st, rt.poll(true))
        local v = results[id]
        if v ~= nil then
            results[id] = nil
            if v == TAKE then
                return rt.take(id)
            end
            return v
        end
        local left = (deadline - now()) * 1000
        if left <= 0 then
            rt.cancel(id)
            return nil, "timeout"
        end
        if next_ms >= 0 and next_ms < left then
            left = next_ms
        end
        st.waker:wait(left)
    end
end


-- What a raw function returned: `true, ...` (finished), `nil, message`
-- (misuse: raised) or a task id (pending; negative when the driver must run
-- soon, which it does here at once).
local function finish(st, ok, ...)
    if ok == true then
        return ...
    end
    if ok == nil then
        error((...), 2)
    end
    if ok < 0 then
        ok = -ok
    end
    return wait(st, ok, config.timeout)
end


local function make_async(st, raw)
    return function(...)
        return finish(st, raw(...))
    end
end


local function sync_finish(ok, ...)
    if ok then
        return ...
    end
    error((...), 2)
end


local function make_sync(raw)
    return function(...)
        return sync_finish(raw(...))
    end
end


local function state(raw)
    local id = raw.__id
    local st = states[id]
    if st then
        return st
    end
    local rt = raw.__rt
    local path, err = rt.path()
    if not path then
        error(err, 3)
    end
    local waker = sys.connect(path)
    local ok
    ok, err = rt.accept()
    if not ok then
        error(err, 3)
    end
    st = { name = raw.__name, rt = rt, waker = waker, results = {} }
    states[id] = st
    return st
end


-- The exports of a module (the raw table Module::build hands over).
function _M.register(raw)
    if type(raw) ~= "table" or type(raw.__rt) ~= "table"
       or type(raw.__kinds) ~= "table"
    then
        error("bad argument #1 to 'register' (the raw table of a "
              .. "resty-async module expected)", 2)
    end
    if raw.__abi ~= sys.abi then
        error("resty.async: module " .. tostring(raw.__name) .. " was built "
              .. "against another version of resty-async", 2)
    end
    local st = state(raw)
    local out = {}
    for name, kind in pairs(raw.__kinds) do
        local f = raw[name]
        if kind == "async" then
            out[name] = make_async(st, f)
        elseif kind == "sync" then
            out[name] = make_sync(f)
        else
            out[name] = f
            if type(f) == "userdata" then
                st.rt.adopt(f)
            end
        end
    end
    return out
end


-- mlua's async functions yield through the `coroutine.yield` they captured
-- when they were made. As in nginx, one that a module did not register
-- (Module::add_lua_async, Module::add_class) raises when called directly.
local markers = {}  -- pending marker -> its library's in_poll()
local co = coroutine
local plain_yield = co.yield

local function guarded_yield(...)
    local in_poll = markers[(...)]
    if in_poll ~= nil and not in_poll() then
        error("this async Rust function or method must be registered "
              .. "through resty-async (Module::add_class::<T>() for the "
              .. "methods of a userdata type, Module::add_lua_async for a "
              .. "function)", 2)
    end
    return plain_yield(...)
end


function _M.guard_mlua(marker, in_poll)
    if type(in_poll) ~= "function" then
        error("bad argument #2 to 'guard_mlua' (function expected)", 2)
    end
    if marker ~= nil then
        markers[marker] = in_poll
    end
    co.yield = guarded_yield  -- luacheck: ignore 122
end


local function mlua_source(f)
    if type(f) == "function" then
        return debug_getinfo(f, "S").source
    end
end


-- The async functions (mlua's) in userdata metatable `mt`, as `{ table,
-- key, function }` (as lualib/resty/async/mlua.lua finds them).
local function async_methods(mt)
    local out, seen = {}, {}
    local function scan(t)
        if type(t) ~= "table" or seen[t] then
            return
        end
        seen[t] = true
        for k, v in pairs(t) do
            if type(k) == "string" and mlua_source(v) == "=__mlua_async_poll"
            then
                out[#out + 1] = { t, k, v }
            end
        end
    end
    scan(mt)
    local index = rawget(mt, "__index")
    if type(index) == "table" then
        scan(index)
    elseif mlua_source(index) == "=__mlua_index" then
        for i = 1, 255 do
            local name, v = debug_getupvalue(index, i)
            if name == nil then
                break
            end
            if name == "__index" or name == "methods" then
                scan(v)
            end
        end
    end
    return out
end


local CLASS_MARK = "__resty_async_class"

-- Takes over the async methods of the type of `ud` (Module::add_class).
function _M.adopt(id, ud, type_name)
    local st = states[id]
    local mt = debug_getmetatable(ud)
    if not st or type(mt) ~= "table" then
        return false
    end
    if rawget(mt, CLASS_MARK) then
        return true
    end
    for _, m in ipairs(async_methods(mt)) do
        local name = type_name .. ":" .. m[2]
        m[1][m[2]] = make_async(st, st.rt.lua_async(name, m[3]))
    end
    rawset(mt, CLASS_MARK, true)
    return true
end


return _M
