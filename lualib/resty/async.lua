-- resty.async: Rust futures and blocking work for OpenResty, driven by
-- nginx's own event loop.
--
-- Each Rust module built on the resty-async crate (this library's own
-- built-ins live in `resty_async_core`) has a runtime per worker process
-- (per Lua VM). Its functions reach this file as raw functions, which
-- register() wraps so that a call waits (resty.async.wait) for its task,
-- which a driver (resty.async.driver) runs.

local ffi = require "ffi"
local core = require "resty_async_core"
local runtime = require "resty.async.runtime"
local driver = require "resty.async.driver"
local wait_mod = require "resty.async.wait"
local task = require "resty.async.task"
local mlua = require "resty.async.mlua"

local ngx = ngx
local type = type
local error = error
local pairs = pairs
local tonumber = tonumber
local tostring = tostring
local get_phase = ngx.get_phase
local ngx_log = ngx.log
local WARN = ngx.WARN
local states = runtime.states
local config = runtime.config
local start_driver = driver.start
local finish = wait_mod.finish
local check_phase = wait_mod.check_phase
local check_timeout = wait_mod.check_timeout
local make_async = wait_mod.make_async
local make_sync = wait_mod.make_sync
local wrapped = wait_mod.wrapped
local start_task = task.start
local take = runtime.take
local wait = wait_mod.wait


local _M = {
    version = core.version,
    guard_mlua = mlua.guard_mlua,
    adopt = mlua.adopt,
}


-- The version of the calling convention between a module's raw functions
-- and this file (resty_async::module::ABI).
local ABI = 7

-- The options given to configure() so far, for the runtimes of modules
-- loaded later.
local options = {}
local DEFAULT_TIMEOUT = config.timeout
local core_st  -- the built-ins' runtime (set below)


-- Hands `opts` to the runtime of `st`, which checks them (Rust owns the
-- settings, their defaults and limits). Returns the new timeout, or nil,
-- message, misuse.
local function configure_runtime(st, opts)
    return st.rt.configure(opts)
end


-- Wraps the functions of a resty-async Rust module (the table its luaopen
-- function made with `Module`). `Module::build` calls this.
function _M.register(raw)
    if type(raw) ~= "table" or type(raw.__rt) ~= "table"
       or type(raw.__kinds) ~= "table"
    then
        error("bad argument #1 to 'register' (the raw table of a "
              .. "resty-async module expected)", 2)
    end
    if raw.__abi ~= ABI then
        error("resty.async: module " .. tostring(raw.__name) .. " was built "
              .. "against another version of resty-async (calling "
              .. "convention " .. tostring(raw.__abi) .. ", this "
              .. "resty/async.lua speaks " .. ABI .. "): rebuild it against "
              .. "the resty-async whose lualib/ is on lua_package_path", 2)
    end

    local st, new = runtime.get(raw, raw.__name or "?")
    if new then
        local ok, err = configure_runtime(st, options)
        if not ok then
            ngx_log(WARN, "resty.async: ", st.name, ": ", err)
        end
    end

    local out = {}
    for name, kind in pairs(raw.__kinds) do
        local f = raw[name]
        if kind == "async" then
            out[name] = make_async(st, name, f)
        elseif kind == "sync" then
            out[name] = make_sync(f)
        else
            out[name] = f
            if type(f) == "userdata" then
                st.rt.adopt(f)  -- an object of a registered type
            end
        end
    end
    return out
end



function _M.configure(opts)
    if type(opts) ~= "table" then
        error("bad argument #1 to 'configure' (table expected, got "
              .. type(opts) .. ")", 2)
    end
    -- Every runtime gets all the options given so far in this Lua VM,
    -- and takes them from its defaults: an option dropped from the
    -- configuration goes back to its default after a reload.
    local merged = {}
    for k, v in pairs(options) do
        merged[k] = v
    end
    for k, v in pairs(opts) do
        if type(v) == "table" then
            local copy = {}
            for i, x in pairs(v) do
                copy[i] = x
            end
            v = copy
        end
        merged[k] = v
    end
    -- the built-ins' runtime first: misuse is raised, before any runtime
    -- took anything
    local ok, res, misuse = configure_runtime(core_st, merged)
    if not ok then
        if misuse then
            error(res, 2)
        end
        return nil, res
    end
    local timeout = res
    -- a module's runtime that refuses them keeps its settings, and the
    -- caller learns of it
    local refused
    for _, st in pairs(states) do
        if st ~= core_st then
            ok, res = configure_runtime(st, merged)
            if not ok and not refused then
                refused = "resty.async: " .. st.name .. ": " .. res
            end
        end
    end
    options = merged
    config.timeout = timeout or DEFAULT_TIMEOUT

    -- In a worker (not in init_by_lua, before fork), start the drivers now.
    local phase = get_phase()
    if phase ~= "init" then
        for _, st in pairs(states) do
            if not st.running then
                local started, err = start_driver(st)
                if not started then
                    return nil, err
                end
            end
        end
    end
    if refused then
        return nil, refused
    end
    return true
end


-- What register() knows of resty.async function `f`, argument `pos` of
-- `fname` (raises in the caller of `fname` if `f` is something else).
local function check_async_fn(f, pos, fname)
    local w = wrapped[f]
    if not w then
        error("bad argument #" .. pos .. " to '" .. fname
              .. "' (a resty.async function expected)", 3)
    end
    return w
end


-- Calls resty.async function `f` with a timeout of its own (seconds).
function _M.with_timeout(timeout, f, ...)
    timeout = check_timeout(timeout, 1, "with_timeout")
    local w = check_async_fn(f, 2, "with_timeout")
    check_phase(w.name)
    return finish(w.st, timeout, w.raw(...))
end


-- Starts resty.async function `f` without waiting; returns a task with
-- task:wait(timeout?) and task:cancel().
function _M.spawn(f, ...)
    local w = check_async_fn(f, 1, "spawn")
    check_phase(w.name)
    return start_task(w.st, w.raw(...))
end


-- Counters of every runtime of this worker, added up, and their settings.
function _M.stats()
    local out = {
        runtimes = runtime.nstates,
        drivers = 0,
        timeout = config.timeout,
    }
    for _, st in pairs(states) do
        local counters, settings = st.rt.stats()
        for k, v in pairs(counters) do
            out[k] = (out[k] or 0) + v
        end
        for k, v in pairs(settings) do
            out[k] = v
        end
        -- (callers carrying out socket ops wait in Lua, not in the runtime)
        out.waiting = (out.waiting or 0) + st.nnet
        if st.running then
            out.drivers = out.drivers + 1
        end
    end
    return out
end


-- The built-ins: called through the FFI (src/ffi.rs).

_M.register(core)
core_st = runtime.get(core, core.__name)
local api = core_st.api
local vm = core_st.vm
local NAN = 0 / 0
-- What a built-in's start did to queue its caller (src/ffi.rs: Api).
local waited = ffi.new("int[1]")
local WAIT_YIELD = runtime.WAIT_YIELD
local WAIT_DONE = runtime.WAIT_DONE
local co_yield = coroutine._yield
local take_ffi = runtime.take_ffi
local forget = runtime.forget
local kick = driver.kick
local driver_running = driver.running


-- How long a built-in's start queues its caller for, if it is pending: the
-- default timeout while the driver runs (which must serve the wait), and
-- not at all for a raw call (async.spawn, with_timeout), whose caller
-- waits (or not) later.
local function wait_now(raw)
    if raw or not driver_running(core_st) or not co_yield then
        return 0
    end
    return config.timeout
end


-- A string argument, as Lua's own functions take one: a number is
-- converted. Returns it, or nil and the message of a misuse.
local function string_arg(v, pos, fname)
    local t = type(v)
    if t == "string" then
        return v
    end
    if t == "number" then
        return tostring(v)
    end
    return nil, "bad argument #" .. pos .. " to '" .. fname
                .. "' (string expected, got " .. t .. ")"
end


-- Each built-in's start: checks the types of its arguments (the Rust side
-- checks their values) and calls its FFI entry point. Returns what the
-- entry point returns (src/ffi.rs: a task id, 0 when it finished at once,
-- NaN on misuse), and the message of a misuse found here.

local function start_sleep(secs, raw)
    if type(secs) ~= "number" then
        -- a numeric string too, as ngx.sleep takes it (luaL_checknumber)
        local n = type(secs) == "string" and tonumber(secs)
        if not n then
            return NAN, "bad argument #1 to 'sleep' (number expected, got "
                        .. type(secs) .. ")"
        end
        secs = n
    end
    -- (no tail calls: see runtime.lua)
    local r = api.sleep(vm, secs, wait_now(raw), waited)
    return r
end


local function start_sha256(data, raw)
    local s, err = string_arg(data, 1, "sha256")
    if not s then
        return NAN, err
    end
    local r = api.sha256(vm, s, #s, wait_now(raw), waited)
    return r
end


local function start_read_file(path, raw)
    local p, err = string_arg(path, 1, "read_file")
    if not p then
        return NAN, err
    end
    local r = api.read_file(vm, p, #p, wait_now(raw), waited)
    return r
end


local function start_write_file(path, data, mode, raw)
    local p, err = string_arg(path, 1, "write_file")
    if not p then
        return NAN, err
    end
    local d
    d, err = string_arg(data, 2, "write_file")
    if not d then
        return NAN, err
    end
    local append
    if mode == nil or mode == "w" then
        append = 0
    elseif mode == "a" then
        append = 1
    else
        return NAN, "bad argument #3 to 'write_file' (mode must be \"w\" "
                    .. "or \"a\")"
    end
    local r = api.write_file(vm, p, #p, d, #d, append, wait_now(raw),
                             waited)
    return r
end


-- The caller's results of a built-in's start `r` (see above): its value,
-- or nil and a message. (`level`: the caller's level for error().)
local function finish_builtin(r, msg, level)
    if r ~= r then
        error(msg or runtime.error_message(core_st), level)
    end
    local v, err
    if r == 0 then
        v, err = take(core_st, 0)
    elseif waited[0] == WAIT_YIELD then
        -- the start queued the caller (as resty.async.wait does)
        if r < 0 then
            r = -r
            kick(core_st)
        end
        local ok
        ok, err = co_yield()
        if ok then
            local n, a, b = take_ffi(core_st, r)
            if n == 1 then
                return a
            end
            return a, b
        end
        forget(core_st, r)
    else
        v, err = wait(core_st, r, config.timeout, level + 1)
    end
    return v, err
end


-- The raw function (see register()) of a built-in, for with_timeout and
-- spawn; `at_once`: its result when it finishes at once (unless the start
-- left one, see src/ffi.rs: Api).
local function raw_builtin(start, at_once)
    return function(...)
        local r, msg = start(...)
        if r == 0 then
            if at_once ~= nil and waited[0] ~= WAIT_DONE then
                return true, at_once
            end
            return true, runtime.take(core_st, 0)
        end
        if r ~= r then
            return nil, msg or runtime.error_message(core_st)
        end
        return r
    end
end


-- (The built-ins return one value, or nil and a message.)

function _M.sleep(secs)
    check_phase("sleep")
    local r, msg = start_sleep(secs)
    if r == 0 and waited[0] ~= WAIT_DONE then
        return true
    end
    local v, err = finish_builtin(r, msg, 3)
    if v == nil then
        return nil, err
    end
    return v
end


function _M.sha256(data)
    check_phase("sha256")
    local r, msg = start_sha256(data)
    local v, err = finish_builtin(r, msg, 3)
    if v == nil then
        return nil, err
    end
    return v
end


function _M.read_file(path)
    check_phase("read_file")
    local r, msg = start_read_file(path)
    local v, err = finish_builtin(r, msg, 3)
    if v == nil then
        return nil, err
    end
    return v
end


function _M.write_file(path, data, mode)
    check_phase("write_file")
    local r, msg = start_write_file(path, data, mode)
    local v, err = finish_builtin(r, msg, 3)
    if v == nil then
        return nil, err
    end
    return v
end


-- (raw: the caller is not queued by the start; see wait_now)
wrapped[_M.sleep] = {
    st = core_st, name = "sleep",
    raw = raw_builtin(function(secs)
        return start_sleep(secs, true)
    end, true),
}
wrapped[_M.sha256] = {
    st = core_st, name = "sha256",
    raw = raw_builtin(function(data)
        return start_sha256(data, true)
    end),
}
wrapped[_M.read_file] = {
    st = core_st, name = "read_file",
    raw = raw_builtin(function(path)
        return start_read_file(path, true)
    end),
}
wrapped[_M.write_file] = {
    st = core_st, name = "write_file",
    raw = raw_builtin(function(path, data, mode)
        return start_write_file(path, data, mode, true)
    end),
}


return _M
