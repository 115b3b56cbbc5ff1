-- resty.async.methods: where mlua keeps the async functions of a userdata
-- type, and how a resty-async library takes them over. Shared by
-- resty.async.mlua and the resty.async of the testing harness
-- (src/testing), which loads it without nginx: no ngx.* here.

local type = type
local pcall = pcall
local error = error
local pairs = pairs
local ipairs = ipairs
local rawget = rawget
local rawset = rawset
local tostring = tostring
local str_find = string.find
local str_sub = string.sub
local debug_getinfo = debug.getinfo
local debug_getupvalue = debug.getupvalue
local debug_setupvalue = debug.setupvalue
local select = select
local setmetatable = setmetatable


local _M = {}


-- The chunk name of function `f` (nil if not a function).
local function mlua_source(f)
    if type(f) == "function" then
        return debug_getinfo(f, "S").source
    end
end


-- Metatable keys whose C functions are not a type's sync metamethods to
-- wrap: the collector's, and the lookups (scanned apart).
local NOT_WRAPPED = {
    __gc = true, __close = true, __index = true, __newindex = true,
}

-- The upvalues of mlua's __index and __newindex functions that hold a
-- type's methods, field getters and field setters (tables), or the type's
-- own __index and __newindex metamethods (functions).
local LOOKUP_UPVALUES = {
    __index = true, methods = true, field_getters = true,
    field_setters = true, __newindex = true,
}


-- The async functions (mlua's) in userdata metatable `mt`, as `{ host,
-- key, function }`: its async metamethods, and the async methods in its
-- __index table, or in the tables mlua's own __index function looks in.
-- The second result: its other methods, metamethods, field getters and
-- setters (C functions), likewise. `host[key]` holds the function, or,
-- when the entry's `up` is true, upvalue number `key` of function `host`
-- does (a type's own __index or __newindex, which mlua's lookup function
-- calls when the key is none of its methods and fields).
function _M.async_methods(mt)
    local out, sync, seen = {}, {}, {}
    local function add(host, k, v, up)
        local src = mlua_source(v)
        if src == "=__mlua_async_poll" then
            out[#out + 1] = { host, k, v, up = up }
        elseif src == "=[C]" then
            sync[#sync + 1] = { host, k, v, up = up }
        end
    end
    local function scan(t, skip)
        if type(t) ~= "table" or seen[t] then
            return
        end
        seen[t] = true
        for k, v in pairs(t) do
            if type(k) == "string" and not (skip and skip[k]
                                            and mlua_source(v) == "=[C]")
            then
                add(t, k, v)
            end
        end
    end
    scan(mt, NOT_WRAPPED)
    for _, key in ipairs({ "__index", "__newindex" }) do
        local f = rawget(mt, key)
        if type(f) == "table" then
            scan(f)
        elseif mlua_source(f) == "=__mlua_index"
               or mlua_source(f) == "=__mlua_newindex"
        then
            for i = 1, 255 do
                local name, v = debug_getupvalue(f, i)
                if name == nil then
                    break
                end
                if LOOKUP_UPVALUES[name] then
                    if type(v) == "table" then
                        scan(v)
                    elseif name == key then
                        add(f, i, v, true)
                    end
                end
            end
        elseif mlua_source(f) == "=[C]" then
            -- the type's own sync __index or __newindex
            sync[#sync + 1] = { mt, key, f }
        end
    end
    return out, sync
end


-- The name (for messages) of an entry of async_methods().
local function entry_name(m)
    if m.up then
        return (debug_getupvalue(m[1], m[2]))
    end
    return m[2]
end


-- Puts `f` where the entry `m` of async_methods() was.
local function replace(m, f)
    if m.up then
        debug_setupvalue(m[1], m[2], f)
    else
        m[1][m[2]] = f
    end
end


-- mlua raises a Rust error as a userdata, which ngx_lua logs as "unknown
-- reason" when nobody catches it: the error of a sync method, metamethod,
-- field getter or setter is raised again as its message (without the
-- traceback mlua appends, and without the "runtime error: " mlua puts
-- before the text of a RuntimeError, which a module function's error
-- does not carry).
local RUNTIME_ERROR = "runtime error: "

local function rethrow(ok, ...)
    if ok then
        return ...
    end
    local e = ...
    if type(e) ~= "string" then
        e = tostring(e)
        local tb = str_find(e, "\nstack traceback:", 1, true)
        if tb then
            e = str_sub(e, 1, tb - 1)
        end
        if str_sub(e, 1, #RUNTIME_ERROR) == RUNTIME_ERROR then
            e = str_sub(e, #RUNTIME_ERROR + 1)
        end
    end
    error(e, 0)
end


-- Runtimes `rt` (see _M.adopt) with no registered type left to take
-- over.
local all_adopted = setmetatable({}, { __mode = "k" })


-- Takes over the registered types of the userdata among `...`, or in the
-- tables among them: a sync method, field or metamethod (a pool's
-- `conn()`) may be where a value of one first reaches Lua.
local function adopt_results(rt, ...)
    for i = 1, select("#", ...) do
        local v = select(i, ...)
        local tv = type(v)
        if (tv == "userdata" or tv == "table") and not rt.adopt(v) then
            all_adopted[rt] = true
            return
        end
    end
end


local function pass(rt, ok, ...)
    if ok and not all_adopted[rt] then
        adopt_results(rt, ...)
    end
    return rethrow(ok, ...)
end


local function raising_strings(f, rt)
    return function(...)
        return pass(rt, pcall(f, ...))
    end
end


-- A `guard_mlua(marker, in_poll)` that installs a `coroutine.yield` for
-- mlua's async functions, which yield through the one they captured when
-- they were made. A yield of the library whose pending marker is `marker`
-- goes to `poll_yield` (default: the `coroutine.yield` the guard
-- replaced) while its executor polls it (`in_poll()`), and raises `msg`
-- otherwise: called directly, the function is not driven by resty-async.
-- Any other yield goes to the replaced `coroutine.yield`.
function _M.yield_guard(msg, poll_yield)
    local markers = {}  -- pending marker -> its library's in_poll()
    local co = coroutine
    local other_yield = co.yield
    local function guarded_yield(...)
        local in_poll = markers[(...)]
        if in_poll ~= nil then
            if in_poll() then
                return (poll_yield or other_yield)(...)
            end
            -- level 3: the caller of the async function, whose body
            -- (mlua's `__mlua_async_poll` chunk) calls this yield
            error(msg, 3)
        end
        return other_yield(...)
    end
    return function(marker, in_poll)
        if type(in_poll) ~= "function" then
            error("bad argument #2 to 'guard_mlua' (function expected)", 2)
        end
        if marker ~= nil then
            markers[marker] = in_poll
        end
        if co.yield ~= guarded_yield then
            other_yield = co.yield
            co.yield = guarded_yield  -- luacheck: ignore 122
        end
    end
end


-- Marks a userdata metatable whose async methods _M.adopt() took over.
local CLASS_MARK = "__resty_async_class"

-- What an mlua async function that no resty-async library drives raises.
_M.UNREGISTERED = "this async Rust function or method must be registered "
                  .. "through resty-async (Module::add_class::<T>() for the "
                  .. "methods of a userdata type, Module::add_lua_async for "
                  .. "a function)"


-- Replaces the async methods of userdata metatable `mt`, of the type
-- `type_name`, with `make(name, raw)`: `raw` is the raw function that
-- runtime `rt` makes of the method (`rt.lua_async`); and its sync ones with
-- functions that raise their errors as strings and take over the types
-- of the objects they return (`rt.adopt`). Once per metatable.
function _M.adopt(mt, type_name, rt, make)
    if rawget(mt, CLASS_MARK) then
        return
    end
    local async, sync = _M.async_methods(mt)
    for _, m in ipairs(async) do
        local name = type_name .. ":" .. entry_name(m)
        replace(m, make(name, rt.lua_async(name, m[3])))
    end
    for _, m in ipairs(sync) do
        replace(m, raising_strings(m[3], rt))
    end
    rawset(mt, CLASS_MARK, true)
end


return _M
