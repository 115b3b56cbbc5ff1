//! Userdata types whose async methods wait the resty-async way
//! ([`crate::Module::add_class`]).
//!
//! mlua makes a userdata type's metatable, with its async methods, the
//! first time a value of the type reaches Lua, and offers no way to reach
//! it before. So a registered type is only noted here; when a value of it
//! comes out of a function of the module or a method of a registered type,
//! alone or in a table (or is one of its exports), `resty/async.lua` swaps
//! the async functions in its metatable for wrappers that run them on the
//! executor, like the module's own async functions. Each Lua VM has its own metatables: the note is
//! per VM.

use std::any::TypeId;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

use mlua::{AnyUserData, Function, Lua, Table, UserData, Value};

/// Most keys and values [`adopt_in`] looks at in one result.
const WALK_BUDGET: usize = 1024;
/// How deep [`adopt_in`] looks into tables within tables.
const WALK_DEPTH: usize = 8;

/// The userdata types of this library registered in one Lua VM.
struct Classes {
    types: RefCell<Vec<Class>>,
    /// `resty.async`'s `adopt(library id, value, type name)`.
    adopt: Function,
}

struct Class {
    id: TypeId,
    name: String,
    /// Its metatable in this VM has been taken over.
    adopted: Cell<bool>,
    /// Whether a userdata is a proxy of the type (`Lua::create_proxy`,
    /// mlua's way to reach its static functions, such as a constructor),
    /// whose metatable is another: the proxy type is private to mlua.
    is_proxy: fn(&AnyUserData) -> bool,
    /// The proxies' metatable in this VM has been taken over.
    proxy_adopted: Cell<bool>,
}

fn is_proxy<T: 'static>(ud: &AnyUserData) -> bool {
    ud.is_proxy::<T>()
}

/// Notes `T` as a type whose async methods resty-async runs.
pub(crate) fn register<T: UserData + 'static>(lua: &Lua) -> mlua::Result<()> {
    let classes = match lua.app_data_ref::<Rc<Classes>>() {
        Some(c) => Rc::clone(&c),
        None => {
            let require: Function = lua.globals().get("require")?;
            let async_lib: Table = require.call("resty.async")?;
            let c = Rc::new(Classes {
                types: RefCell::new(Vec::new()),
                adopt: async_lib.get("adopt")?,
            });
            lua.set_app_data(Rc::clone(&c));
            c
        }
    };
    let id = TypeId::of::<T>();
    let mut types = classes.types.borrow_mut();
    if !types.iter().any(|c| c.id == id) {
        let name = std::any::type_name::<T>();
        types.push(Class {
            id,
            name: name.rsplit("::").next().unwrap_or(name).to_owned(),
            adopted: Cell::new(false),
            is_proxy: is_proxy::<T>,
            proxy_adopted: Cell::new(false),
        });
    }
    Ok(())
}

/// Whether a registered type's metatable was not taken over yet in this
/// VM.
pub(crate) fn pending(lua: &Lua) -> bool {
    lua.app_data_ref::<Rc<Classes>>()
        .is_some_and(|c| c.types.borrow().iter().any(|c| !c.adopted.get()))
}

/// Takes over the registered types of the userdata in table `t` (a
/// result, such as a `Vec` of objects or a record holding one), and in
/// the tables it holds: a value of such a type first reaches Lua there
/// as often as alone. It looks at [`WALK_BUDGET`] keys and values at
/// most, [`WALK_DEPTH`] tables deep, and stops once no type is pending.
pub(crate) fn adopt_in(lua: &Lua, t: &Table) -> mlua::Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(t.clone(), 0)];
    let mut budget = WALK_BUDGET;
    while let Some((t, depth)) = stack.pop() {
        if !seen.insert(t.to_pointer()) {
            continue;
        }
        for pair in t.pairs::<Value, Value>() {
            let (k, v) = pair?;
            for x in [k, v] {
                if budget == 0 {
                    return Ok(());
                }
                budget -= 1;
                match x {
                    Value::UserData(_) => {
                        adopt(lua, &x)?;
                        if !pending(lua) {
                            return Ok(());
                        }
                    }
                    Value::Table(t) if depth < WALK_DEPTH => stack.push((t, depth + 1)),
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// A result `v` of Rust code for Lua: [`adopt`] if it is a userdata,
/// [`adopt_in`] if it is a table and a registered type is still pending.
pub(crate) fn adopt_value(lua: &Lua, v: &Value) -> mlua::Result<()> {
    match v {
        Value::Table(t) if pending(lua) => adopt_in(lua, t),
        v => adopt(lua, v),
    }
}

/// If `v` is a value, or a proxy, of a registered type whose metatable
/// was not taken over yet in this VM, takes it over.
pub(crate) fn adopt(lua: &Lua, v: &Value) -> mlua::Result<()> {
    let Value::UserData(ud) = v else {
        return Ok(());
    };
    let Some(classes) = lua.app_data_ref::<Rc<Classes>>().map(|c| Rc::clone(&c)) else {
        return Ok(());
    };
    let Some(id) = ud.type_id() else {
        return Ok(());
    };
    // (the flag of the metatable found: the instances' or the proxies')
    let found = {
        let types = classes.types.borrow();
        match types.iter().position(|c| c.id == id) {
            Some(i) => (!types[i].adopted.get()).then_some((i, false)),
            None => types
                .iter()
                .position(|c| !c.proxy_adopted.get() && (c.is_proxy)(ud))
                .map(|i| (i, true)),
        }
        .map(|(i, proxy)| (i, proxy, types[i].name.clone()))
    };
    let Some((i, proxy, name)) = found else {
        return Ok(());
    };
    let done: bool = classes.adopt.call((crate::raw::library_id(), ud.clone(), name))?;
    if done {
        let types = classes.types.borrow();
        let flag = if proxy {
            &types[i].proxy_adopted
        } else {
            &types[i].adopted
        };
        flag.set(true);
    }
    Ok(())
}
