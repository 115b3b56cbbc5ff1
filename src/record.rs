//! [`Record`]: a Lua table of strings, numbers and booleans, made in one
//! protected call.
//!
//! mlua (module mode, LuaJIT) protects every table write and every string
//! it makes with a protected call of its own, which builds C closures
//! each time, so a table of many fields costs one protected call per
//! write. A `Record` is built in Rust and made into a Lua table by one C
//! function under one `lua_pcall`, as `strings.rs` makes a string: a
//! memory error still becomes an `Err`.

use std::cell::Cell;
use std::ffi::{c_char, c_int};

use mlua::{ffi, IntoLua, Lua, Table, Value};

use crate::protected;

/// A key of a [`Record`]: a string, or an integer (1, 2, ... make a list).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Key<'a> {
    /// A string key (any bytes).
    Str(&'a [u8]),
    /// An integer key.
    Int(i64),
}

impl<'a> From<&'a str> for Key<'a> {
    fn from(s: &'a str) -> Key<'a> {
        Key::Str(s.as_bytes())
    }
}

impl<'a> From<&'a String> for Key<'a> {
    fn from(s: &'a String) -> Key<'a> {
        Key::Str(s.as_bytes())
    }
}

impl<'a> From<&'a [u8]> for Key<'a> {
    fn from(s: &'a [u8]) -> Key<'a> {
        Key::Str(s)
    }
}

impl From<i64> for Key<'_> {
    fn from(i: i64) -> Key<'static> {
        Key::Int(i)
    }
}

/// A value of a [`Record`].
#[derive(Debug, Clone, PartialEq)]
pub enum Field<'a> {
    /// A string (any bytes), copied into the record.
    Str(&'a [u8]),
    /// A string whose bytes are moved into the record, not copied: for a
    /// large value such as a response body (`Vec<u8>` and `String`
    /// convert to it).
    Owned(Vec<u8>),
    /// A number.
    Num(f64),
    /// A boolean.
    Bool(bool),
    /// A nested table.
    Table(Record),
}

impl<'a> From<&'a str> for Field<'a> {
    fn from(s: &'a str) -> Field<'a> {
        Field::Str(s.as_bytes())
    }
}

impl<'a> From<&'a String> for Field<'a> {
    fn from(s: &'a String) -> Field<'a> {
        Field::Str(s.as_bytes())
    }
}

impl<'a> From<&'a [u8]> for Field<'a> {
    fn from(s: &'a [u8]) -> Field<'a> {
        Field::Str(s)
    }
}

impl<'a> From<&'a Vec<u8>> for Field<'a> {
    fn from(s: &'a Vec<u8>) -> Field<'a> {
        Field::Str(s)
    }
}

impl From<Vec<u8>> for Field<'_> {
    fn from(s: Vec<u8>) -> Field<'static> {
        Field::Owned(s)
    }
}

impl From<String> for Field<'_> {
    fn from(s: String) -> Field<'static> {
        Field::Owned(s.into_bytes())
    }
}

impl From<f64> for Field<'_> {
    fn from(n: f64) -> Field<'static> {
        Field::Num(n)
    }
}

impl From<i64> for Field<'_> {
    fn from(n: i64) -> Field<'static> {
        Field::Num(n as f64)
    }
}

impl From<u16> for Field<'_> {
    fn from(n: u16) -> Field<'static> {
        Field::Num(f64::from(n))
    }
}

impl From<u32> for Field<'_> {
    fn from(n: u32) -> Field<'static> {
        Field::Num(f64::from(n))
    }
}

impl From<bool> for Field<'_> {
    fn from(b: bool) -> Field<'static> {
        Field::Bool(b)
    }
}

impl From<Record> for Field<'_> {
    fn from(r: Record) -> Field<'static> {
        Field::Table(r)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum KeyAt {
    Str(usize, usize),
    Int(i64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum FieldAt {
    Str(usize, usize),
    Owned(usize),
    Num(f64),
    Bool(bool),
    Table(usize),
}

/// A Lua table of strings, numbers, booleans and nested records, made in
/// one protected call when it reaches Lua (it implements `IntoLua`):
/// return it from a module's function instead of an `mlua::Table` built
/// field by field. Its strings are kept in one buffer. Later keys replace
/// earlier equal ones, as in Lua.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    bytes: Vec<u8>,
    fields: Vec<(KeyAt, FieldAt)>,
    tables: Vec<Record>,
    /// The strings moved in ([`Field::Owned`]).
    owned: Vec<Vec<u8>>,
    /// Integer keys set (room for them when the table is made).
    narr: usize,
    /// The largest integer key set (0: none above 0): [`Record::push`]
    /// appends after it.
    last: i64,
}

impl Record {
    /// An empty record.
    pub fn new() -> Record {
        Record::default()
    }

    /// An empty record with room for `n` fields.
    pub fn with_capacity(n: usize) -> Record {
        Record {
            fields: Vec::with_capacity(n),
            ..Record::default()
        }
    }

    /// Makes room for `n` more bytes of keys and strings (they are kept
    /// in one buffer, which otherwise grows as they come).
    pub fn reserve_bytes(&mut self, n: usize) -> &mut Record {
        self.bytes.reserve(n);
        self
    }

    fn put(&mut self, s: &[u8]) -> (usize, usize) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(s);
        (at, s.len())
    }

    /// Sets `key` to `value`.
    pub fn set<'a, 'b>(&mut self, key: impl Into<Key<'a>>, value: impl Into<Field<'b>>) -> &mut Record {
        let key = match key.into() {
            Key::Str(s) => {
                let (at, n) = self.put(s);
                KeyAt::Str(at, n)
            }
            Key::Int(i) => {
                self.narr += 1;
                self.last = self.last.max(i);
                KeyAt::Int(i)
            }
        };
        let value = match value.into() {
            Field::Str(s) => {
                let (at, n) = self.put(s);
                FieldAt::Str(at, n)
            }
            Field::Owned(s) => {
                self.owned.push(s);
                FieldAt::Owned(self.owned.len() - 1)
            }
            Field::Num(n) => FieldAt::Num(n),
            Field::Bool(b) => FieldAt::Bool(b),
            Field::Table(t) => {
                self.tables.push(t);
                FieldAt::Table(self.tables.len() - 1)
            }
        };
        self.fields.push((key, value));
        self
    }

    /// Appends `value` at the next list index (1, 2, ...): after the
    /// largest integer key set so far.
    pub fn push<'b>(&mut self, value: impl Into<Field<'b>>) -> &mut Record {
        let i = self.last.saturating_add(1);
        self.set(Key::Int(i), value)
    }

    /// The number of fields set.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The Lua table, made under one protected call.
    pub fn to_table(&self, lua: &Lua) -> mlua::Result<Table> {
        PENDING.with(|p| p.set(self as *const Record));
        let t = protected::call(lua, &BUILDER_KEY, "record builder");
        PENDING.with(|p| p.set(std::ptr::null()));
        t
    }
}

impl IntoLua for Record {
    fn into_lua(self, lua: &Lua) -> mlua::Result<Value> {
        self.to_table(lua).map(Value::Table)
    }
}

// Its address is the registry key of the building function (see
// protected.rs).
static BUILDER_KEY: u8 = 0;

thread_local! {
    // The record `to_table` is making a table of; null otherwise. Not an
    // argument: Lua code can reach the function through
    // debug.getregistry(), and must not make it read arbitrary memory.
    static PENDING: Cell<*const Record> = const { Cell::new(std::ptr::null()) };
}

/// Pushes `r` as a table. Owns nothing: a memory error raised by Lua
/// unwinds through it to `to_table`'s lua_pcall with nothing to drop.
///
/// # Safety
///
/// `state` is a running Lua state with a free stack slot.
unsafe fn push_record(state: *mut ffi::lua_State, r: &Record) {
    let narr = r.narr.min(c_int::MAX as usize) as c_int;
    let nrec = (r.fields.len() - r.narr).min(c_int::MAX as usize) as c_int;
    let bytes = r.bytes.as_ptr() as *const c_char;
    // SAFETY: (for the whole function) the caller guarantees one free
    // slot for the table; lua_checkstack makes two more for a key and a
    // value, and a nested record gets its own check. The byte ranges were
    // taken from `r.bytes` by `set`, and an owned string's index from
    // `r.owned`.
    unsafe {
        ffi::lua_createtable(state, narr, nrec);
        ffi::luaL_checkstack(state, 3, c"resty-async: record too deep".as_ptr());
        for &(k, v) in &r.fields {
            match k {
                KeyAt::Str(at, n) => {
                    ffi::lua_pushlstring(state, bytes.add(at), n);
                }
                KeyAt::Int(i) => ffi::lua_pushinteger(state, i as ffi::lua_Integer),
            }
            match v {
                FieldAt::Str(at, n) => {
                    ffi::lua_pushlstring(state, bytes.add(at), n);
                }
                FieldAt::Owned(i) => {
                    let s = &r.owned[i];
                    ffi::lua_pushlstring(state, s.as_ptr() as *const c_char, s.len());
                }
                FieldAt::Num(n) => ffi::lua_pushnumber(state, n),
                FieldAt::Bool(b) => ffi::lua_pushboolean(state, c_int::from(b)),
                FieldAt::Table(t) => push_record(state, &r.tables[t]),
            }
            ffi::lua_rawset(state, -3);
        }
    }
}

/// Builds the record `to_table` left in PENDING (nothing if none).
unsafe extern "C-unwind" fn build(state: *mut ffi::lua_State) -> c_int {
    let r = PENDING.with(|p| p.replace(std::ptr::null()));
    if r.is_null() {
        return 0;
    }
    // SAFETY: `to_table` stored a record that stays borrowed until its
    // lua_pcall of this function returns, and this is that call; a fresh
    // C function has room for its results (LUA_MINSTACK).
    unsafe { push_record(state, &*r) };
    1
}

/// Makes [`Record::to_table`] usable in `lua` (once per Lua state and
/// library; again is harmless). `Module::new` calls it.
pub(crate) fn install(lua: &Lua) -> mlua::Result<()> {
    // SAFETY: `build` follows the lua_CFunction protocol (see above).
    unsafe { protected::install(lua, &BUILDER_KEY, build) }
}
