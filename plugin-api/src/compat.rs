//! Host side: loading a library built for an older minor of this ABI.
//!
//! abi_stable's layout check lets a library be *newer* than its host (a
//! prefix type, a vtable or a module, may have more fields than the host
//! knows) but never older: a vtable with fewer methods than the host's is
//! "too many fields" and the library is refused. That would make every
//! append to the interface (ABI 1.1's `on_upload`, say) refuse every library
//! built before it, which is what append-only evolution promises not to do.
//!
//! Reading an older library is sound: a prefix type's accessors test the
//! field bits the *library* was compiled with, so a trait method appended
//! after `#[sabi(last_prefix_field)]` that the library lacks runs its default
//! body, and an appended root-module function reads as absent. So the host
//! accepts a library whose only differences are such prefix types ending
//! earlier than its own, and nothing else.

use abi_stable::abi_stability::abi_checking::{
    check_layout_compatibility, AbiInstability, AbiInstabilityErrors,
};
use abi_stable::library::{LibHeader, LibraryError};
use abi_stable::type_layout::TLFieldOrFunction;
use abi_stable::StableAbi;

use crate::PluginLibRef;

/// Checks and initialises the root module of a loaded library like
/// `LibHeader::init_root_module` (the ABI major, the whole interface's
/// layout), but also accepts a library built for an older minor of this
/// major: one whose interface differs only in vtables and modules that end
/// earlier than this host's, because methods and functions were appended
/// after their `#[sabi(last_prefix_field)]` since it was built.
///
/// # Errors
///
/// What `init_root_module` returns for any other difference, another
/// major, or a library whose initialisation fails.
pub fn init_root_module(header: &LibHeader) -> Result<PluginLibRef, LibraryError> {
    match header.init_root_module::<PluginLibRef>() {
        Err(LibraryError::AbiInstability(report)) => {
            let older = header.layout().is_some_and(|found| {
                check_layout_compatibility(<PluginLibRef as StableAbi>::LAYOUT, found)
                    .err()
                    .is_some_and(|errors| only_shorter_prefix_types(&errors))
            });
            if !older {
                return Err(LibraryError::AbiInstability(report));
            }
            // SAFETY: the interfaces differ only in prefix types that end
            // earlier in the library than here (same prefix, same fields as
            // far as the library's go, checked just above); accessors of the
            // fields past the library's end read its own field bits and
            // never touch memory it lacks (see the module docs).
            unsafe { header.init_root_module_with_unchecked_layout::<PluginLibRef>() }
        }
        other => other,
    }
}

/// Whether every difference abi_stable found is a prefix type of the
/// library with fewer fields (and so a smaller size) than the host's, and
/// there is at least one.
pub(crate) fn only_shorter_prefix_types(errors: &AbiInstabilityErrors) -> bool {
    let mut any = false;
    for error in errors.errors.iter() {
        // Entries without errors of their own are the types on the way down
        // to the one that differs.
        if error.errs.is_empty() {
            continue;
        }
        let prefix_type = match error.stack_trace.last().map(|pair| &pair.expected) {
            Some(TLFieldOrFunction::Field(field)) => field.layout().is_prefix_kind(),
            _ => false,
        };
        if !prefix_type {
            return false;
        }
        for err in error.errs.iter() {
            match err {
                AbiInstability::FieldCountMismatch(n) | AbiInstability::Size(n)
                    if n.expected > n.found =>
                {
                    any = true
                }
                _ => return false,
            }
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::only_shorter_prefix_types;
    use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
    use abi_stable::StableAbi;

    /// One module and trait in three versions: as first released, with a
    /// function and a method appended (an older library must load), and
    /// with the same appends plus a plain struct that grew (it must not).
    macro_rules! version {
        ($name:ident, [$($method:tt)*], [$($function:tt)*], [$($data:tt)*]) => {
            // Layouts only: nothing is called, and sabi_trait's impls are
            // not local to the macro's module.
            #[allow(dead_code, non_local_definitions, unused_braces)]
            mod $name {
                use abi_stable::{sabi_trait, std_types::RBox, StableAbi};

                #[sabi_trait]
                pub trait Component: Send {
                    #[sabi(last_prefix_field)]
                    fn on_tick(&mut self, now: u64) -> u64;
                    $($method)*
                }

                #[repr(C)]
                #[derive(StableAbi)]
                pub struct Data {
                    pub a: u32,
                    pub b: u32,
                    $($data)*
                }

                #[repr(C)]
                #[derive(StableAbi)]
                #[sabi(kind(Prefix(prefix_ref = ModuleRef)))]
                #[sabi(missing_field(panic))]
                pub struct Module {
                    pub make: extern "C" fn() -> Component_TO<'static, RBox<()>>,
                    #[sabi(last_prefix_field)]
                    pub data: extern "C" fn() -> Data,
                    $($function)*
                }
            }
        };
    }

    version!(v1_0, [], [], []);
    version!(
        v1_1,
        [fn on_upload(&mut self, bps: u64) -> u64 { bps }],
        [pub describe: extern "C" fn() -> u32,],
        []
    );
    version!(
        broken,
        [fn on_upload(&mut self, bps: u64) -> u64 { bps }],
        [pub describe: extern "C" fn() -> u32,],
        [pub c: u64,]
    );

    fn differences(
        host: &'static abi_stable::type_layout::TypeLayout,
        library: &'static abi_stable::type_layout::TypeLayout,
    ) -> abi_stable::abi_stability::abi_checking::AbiInstabilityErrors {
        check_layout_compatibility(host, library).expect_err("abi_stable refuses it")
    }

    #[test]
    fn an_older_minor_differs_only_in_shorter_prefix_types() {
        let errors = differences(
            <v1_1::ModuleRef as StableAbi>::LAYOUT,
            <v1_0::ModuleRef as StableAbi>::LAYOUT,
        );
        assert!(only_shorter_prefix_types(&errors), "{errors}");
    }

    #[test]
    fn a_newer_library_is_fine_for_abi_stable_already() {
        check_layout_compatibility(
            <v1_0::ModuleRef as StableAbi>::LAYOUT,
            <v1_1::ModuleRef as StableAbi>::LAYOUT,
        )
        .unwrap();
    }

    #[test]
    fn a_plain_struct_that_changed_is_still_refused() {
        for (host, library) in [
            (
                <broken::ModuleRef as StableAbi>::LAYOUT,
                <v1_0::ModuleRef as StableAbi>::LAYOUT,
            ),
            (
                <v1_1::ModuleRef as StableAbi>::LAYOUT,
                <broken::ModuleRef as StableAbi>::LAYOUT,
            ),
            (
                <broken::ModuleRef as StableAbi>::LAYOUT,
                <v1_1::ModuleRef as StableAbi>::LAYOUT,
            ),
        ] {
            let errors = differences(host, library);
            assert!(!only_shorter_prefix_types(&errors), "{errors}");
        }
    }
}
