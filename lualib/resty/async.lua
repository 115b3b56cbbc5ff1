-- resty.async: Rust futures and blocking work for OpenResty, driven by
-- nginx's own event loop.
--
-- Each Rust module built on the resty-async crate (this library's own
-- built-ins live in `resty_async_core`) has a runtime per worker process
-- (per Lua VM). Its functions reach this file as raw functions, which
-- register() wraps so that a call waits (resty.async.wait) for its task,
-- which a driver (resty.async.driver) runs.

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


local _M = {
    version = core.version,
    guard_mlua = mlua.guard_mlua,
    adopt = mlua.adopt,
}


-- The version of the calling convention between a module's raw functions
-- and this file (resty_async::module::ABI).
local ABI = 4

-- The options given to configure() so far, for the runtimes of modules
-- loaded later.
local options = {}


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
    local timeout
    local first = true
    for _, st in pairs(states) do
        local ok, res, misuse = configure_runtime(st, opts)
        if not ok then
            if misuse then
                error(res, 2)
            end
            if first then
                return nil, res
            end
            ngx_log(WARN, "resty.async: ", st.name, ": ", res)
        else
            timeout = res or timeout
        end
        first = false
    end
    for k, v in pairs(opts) do
        if type(v) == "table" then
            local copy = {}
            for i = 1, #v do
                copy[i] = v[i]
            end
            v = copy
        end
        options[k] = v
    end
    if timeout then
        config.timeout = timeout
    end

    -- In a worker (not in init_by_lua, before fork), start the drivers now.
    local phase = get_phase()
    if phase ~= "init" then
        for _, st in pairs(states) do
            if not st.running then
                local ok, err = start_driver(st)
                if not ok then
                    return nil, err
                end
            end
        end
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
    check_timeout(timeout, 1, "with_timeout")
    local w = check_async_fn(f, 2, "with_timeout")
    check_phase(w.name)
    return finish(w.st, timeout, w.raw(...))
end



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
        waiting = 0,
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
        if st.running then
            out.drivers = out.drivers + 1
        end
        out.waiting = out.waiting + st.nwaiting
        -- results handed to Lua and not yet taken are in flight too
        out.in_flight = out.in_flight + st.nheld
    end
    return out
end


local builtins = _M.register(core)
for name, f in pairs(builtins) do
    _M[name] = f
end


return _M
