-- resty.async.runtime: the Lua side of each Rust runtime (one per
-- resty-async library and Lua VM): its entry points, the callers that
-- wait for its tasks, and how a finished task's results are taken.
--
-- The calls that need no Lua values go through LuaJIT's FFI (the
-- library's `struct resty_async_api`, see src/ffi.rs), which the JIT
-- compiles; the others through the library's Lua C functions (`rt`).

local ffi = require "ffi"

local ngx = ngx
local type = type
local error = error
local pairs = pairs
local setmetatable = setmetatable
local ffi_cast = ffi.cast
local ffi_new = ffi.new
local ffi_string = ffi.string


-- ngx.process.type(), or nil where lua-resty-core lacks it.
local process_type
do
    local ok, process = pcall(require, "ngx.process")
    process_type = ok and process.type or function() return nil end
end


local function get_ctx()
    return ngx.ctx
end


ffi.cdef[[
typedef struct {
    double next_ms;
    int n;
    int flags;
    int waiting;
} resty_async_poll_out;

typedef struct {
    int kind;
    double num;
    const char *ptr;
    size_t len;
} resty_async_value;

typedef struct {
    double id;
    double num;
    const char *ptr;
    size_t len;
    int kind;
} resty_async_posted;

struct resty_async_api {
    uint32_t abi;
    uint32_t size;
    double (*sleep)(const void *vm, double secs, double wait, int *waited);
    double (*sha256)(const void *vm, const char *p, size_t n, double wait,
                     int *waited);
    double (*read_file)(const void *vm, const char *p, size_t n,
                        double wait, int *waited);
    double (*write_file)(const void *vm, const char *p, size_t n,
                         const char *d, size_t dn, int append, double wait,
                         int *waited);
    int (*take)(const void *vm, double id, resty_async_value *out);
    int (*cancel)(const void *vm, double id);
    size_t (*error)(char *buf, size_t cap);
    int (*poll)(const void *vm, int arm, double *ids, int cap,
                resty_async_poll_out *out);
    int (*wait)(const void *vm, double id, double timeout);
    resty_async_posted *(*mailbox)(const void *vm, int *cap);
};
]]


local _M = {
    -- One state per runtime (Rust library), keyed by the library's id.
    states = {},
    nstates = 0,
    -- Settings of the Lua side (configure() updates them).
    config = {
        timeout = 60,
    },
    -- The version of `struct resty_async_api` (src/ffi.rs FFI_ABI).
    FFI_ABI = 4,
    -- resty_async_value.kind
    KIND_NONE = 0,
    KIND_PENDING = 1,
    KIND_BOOLEAN = 2,
    KIND_NUMBER = 3,
    KIND_STRING = 4,
    KIND_ERROR = 5,
    KIND_LUA = 6,
    -- what api.cancel returns when dropping the task needs Lua
    CANCEL_NEEDS_LUA = 2,
    -- what api.wait returns (src/ffi.rs)
    WAIT_YIELD = 1,
    WAIT_DONE = 2,
    WAIT_C_FUNCTION = 0,
    WAIT_CANNOT = -1,
    WAIT_TIMEOUT = -2,
}

local KIND_PENDING = _M.KIND_PENDING
local KIND_BOOLEAN = _M.KIND_BOOLEAN
local KIND_NUMBER = _M.KIND_NUMBER
local KIND_STRING = _M.KIND_STRING
local KIND_ERROR = _M.KIND_ERROR
local KIND_LUA = _M.KIND_LUA
local CANCEL_NEEDS_LUA = _M.CANCEL_NEEDS_LUA

-- Out-parameters of the FFI calls, allocated once.
local value = ffi_new("resty_async_value[1]")
local cap_out = ffi_new("int[1]")
-- A plain task's id modulo this is the index of its mailbox entry.
local INDEX = 2 ^ 24
local ERRBUF_SIZE = 512
local errbuf = ffi_new("char[?]", ERRBUF_SIZE)


-- The state of the runtime of raw module table `raw` (made on first use),
-- and whether it is new. Raises if the library's FFI entry points do not
-- match this file's declarations.
function _M.get(raw, name)
    local id = raw.__id
    local st = _M.states[id]
    if st then
        return st, false
    end
    local api = ffi_cast("const struct resty_async_api *", raw.__api)
    if api.abi ~= _M.FFI_ABI
       or api.size ~= ffi.sizeof("struct resty_async_api")
    then
        error("resty.async: module " .. name .. " has FFI entry points of "
              .. "another version (" .. tostring(api.abi) .. ", this "
              .. "resty/async.lua declares " .. _M.FFI_ABI .. "): rebuild "
              .. "it against the resty-async whose lualib/ is on "
              .. "lua_package_path", 3)
    end
    if type(raw.__rt.wait) ~= "function" then
        error("resty.async: ngx_lua's semaphore functions (those of "
              .. "lua-resty-core) or OpenResty's LuaJIT (lua_getexdata) "
              .. "were not found in this nginx", 3)
    end
    local vm = ffi_cast("const void *", raw.__vm)
    -- where the driver's poll leaves the results of the callers it posts
    -- (src/mailbox.rs): entries 0 .. mailbox_cap - 1
    local mailbox = api.mailbox(vm, cap_out)
    local phase = ngx.get_phase()
    st = {
        name = name,
        rt = raw.__rt,
        api = api,
        vm = vm,
        mailbox = mailbox,
        mailbox_cap = mailbox ~= nil and cap_out[0] or 0,
        vm_handle = raw.__vm,  -- (light userdata, for the Lua C functions)
        wait = raw.__rt.wait,
        waiting = 0,      -- callers waiting, as of the last poll
        owned = {},       -- task id -> "pending"|"done", for handles
        -- resty.async.net: the callers that carry out their tasks' socket
        -- ops (id -> true), their states (weak: a killed caller's goes
        -- with it), how many, and the ops a spawn's raw call returned
        netids = {},
        nets = setmetatable({}, { __mode = "v" }),
        nnet = 0,
        netops = {},
        collected = {},   -- ids of handles the GC collected
        -- the ngx.ctx of each request or timer that made or waited on a
        -- task handle, while it runs (weak: the GC collects the table of
        -- one that ended); see driver.lua: abandoned()
        users = setmetatable({}, { __mode = "k" }),
        -- whether this VM is one of a request (`lua_code_cache off`):
        -- init_by_lua runs in a worker only then, once per VM
        cache_off = phase == "init" and process_type() == "worker",
        swept = 0,
        running = false,
        failures = 0,
        polls = 0,
        pid = ngx.worker.pid(),  -- see may_close()
        phase = phase,
    }
    _M.states[id] = st
    _M.nstates = _M.nstates + 1
    return st, true
end


-- Whether the VM of `st` may be closed once its handlers end. The VM
-- resty.async was loaded into before nginx forked, or in which
-- init_worker_by_lua ran, lives as long as the worker; others may be
-- closed (`lua_code_cache off`).
local function may_close(st)
    return st.pid == ngx.worker.pid() and st.phase ~= "init_worker"
end
_M.may_close = may_close


-- Notes that the request or timer running now holds a task handle of
-- `st`, or waits on one: the driver of a VM that may close stays for
-- handles only while such a handler runs (see driver.lua: abandoned()).
function _M.note_user(st)
    if may_close(st) then
        local ok, ctx = pcall(get_ctx)
        if ok and ctx then
            st.users[ctx] = true
        end
    end
end


-- The message of the last misuse an FFI call of `st` reported.
function _M.error_message(st)
    local n = st.api.error(errbuf, ERRBUF_SIZE)
    return ffi_string(errbuf, n)
end


-- Hands a finished task that no caller waits for in the runtime (which
-- posts those itself) to the caller that carries out its socket ops
-- (resty.async.net), or to its task handle; or frees its results. A
-- negative id: task -id queued socket ops and nobody waits for it in the
-- runtime (a handle's wait learns of them from the runtime).
local function finished(st, id)
    local ops = id < 0
    if ops then
        id = -id
    end
    local ctx = st.nets[id]
    if ctx then
        ctx:event(ops)
    elseif ops then
        return
    elseif st.owned[id] then
        st.owned[id] = "done"  -- the handle collects it later
    else
        _M.forget(st, id)
    end
end


-- The results of finished task `id` (0: the result of a call that
-- finished at once).
--
-- The functions on the path of a call make no tail calls: LuaJIT aborts a
-- trace that leaves the function it started in that way, and after a few
-- aborts it stops trying, and the function runs in the interpreter.
--
-- Returns how many results there are, 1 (`a`) or 2 (`a, b`), or 0 when
-- they are Lua values that only `st.rt.take(id)` returns; -1 when the
-- task is pending: it woke its caller for socket ops (resty.async.net).
local function take_ffi(st, id)
    -- a result the poll left in the mailbox (its caller was posted): read
    -- without a call, and marked read for the runtime to free its task.
    -- (Its own copy of the dispatch below: one function for both kinds of
    -- cdata made the traces of the sleep path vary; see bench/README.md.)
    local i = id % INDEX
    if i < st.mailbox_cap and id > 0 then
        local e = st.mailbox[i]
        if e.id == id then
            local kind = e.kind
            if kind == KIND_STRING then
                local s = ffi_string(e.ptr, e.len)
                e.id = 0
                return 1, s
            elseif kind == KIND_BOOLEAN then
                local b = e.num ~= 0
                e.id = 0
                return 1, b
            elseif kind == KIND_NUMBER then
                local n = e.num
                e.id = 0
                return 1, n
            elseif kind == KIND_ERROR then
                local msg = ffi_string(e.ptr, e.len)
                e.id = 0
                return 2, nil, msg
            end
        end
    end
    local kind = st.api.take(st.vm, id, value)
    local v = value[0]
    if kind == KIND_STRING then
        local s = ffi_string(v.ptr, v.len)
        return 1, s
    elseif kind == KIND_BOOLEAN then
        return 1, v.num ~= 0
    elseif kind == KIND_NUMBER then
        local n = v.num
        return 1, n
    elseif kind == KIND_ERROR then
        local msg = ffi_string(v.ptr, v.len)
        return 2, nil, msg
    elseif kind == KIND_LUA then
        return 0
    elseif kind == KIND_PENDING then
        return -1
    end
    return 2, nil, "no result for this task (cancelled?)"
end


-- The results of finished task `id`, any number of them.
local function take(st, id)
    st.netops[id] = nil
    local n, a, b = take_ffi(st, id)
    if n == 1 then
        return a
    elseif n == 2 then
        return a, b
    end
    return st.rt.take(id)
end


-- Forgets task `id`: drops its Rust future, or its results.
local function forget(st, id)
    st.netops[id] = nil
    if st.api.cancel(st.vm, id) == CANCEL_NEEDS_LUA then
        st.rt.cancel(id)
    end
end


_M.finished = finished
_M.take = take
_M.take_ffi = take_ffi
_M.forget = forget


-- Calls f(st) for every runtime.
function _M.each(f)
    for _, st in pairs(_M.states) do
        f(st)
    end
end


return _M
