// FL_EXPORT(name): registers a kernel with the emulator's runtime under its name, with a
// type-erased launcher that unpacks a cuLaunchKernel-style `void** args` (one pointer to each
// parameter's value) into the kernel's typed parameters, and a signature string the Python side
// checks arguments against.
#pragma once

#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>

namespace fl_emu {
using Invoker = void (*)(void** args);
}

extern "C" FL_EMU_HIDDEN void fl_emu_register(const char* name, fl_emu::Invoker invoke, int nparams,
                                              const char* signature);

namespace fl_emu {

// One parameter's token in the signature: p<align> for a pointer (the pointee's alignment),
// i<bytes> / u<bytes> for signed / unsigned integers, f<bytes> for floating point, b1 for bool,
// s<bytes> for anything else passed by value (a struct).
template <class T> std::string param_token() {
    if constexpr (std::is_pointer<T>::value) {
        using P = typename std::remove_cv<typename std::remove_pointer<T>::type>::type;
        if constexpr (std::is_void<P>::value || std::is_function<P>::value) return "p1";
        else return "p" + std::to_string(alignof(P));
    } else if constexpr (std::is_same<T, bool>::value) {
        return "b1";
    } else if constexpr (std::is_integral<T>::value) {
        return (std::is_signed<T>::value ? "i" : "u") + std::to_string(sizeof(T));
    } else if constexpr (std::is_floating_point<T>::value) {
        return "f" + std::to_string(sizeof(T));
    } else {
        return "s" + std::to_string(sizeof(T));
    }
}

template <class... A, std::size_t... I>
inline void call_unpacked(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    (void)args;
    kernel(*static_cast<typename std::remove_reference<A>::type*>(args[I])...);
}

template <class F> struct KernelTraits;
template <class... A> struct KernelTraits<void (*)(A...)> {
    static constexpr int arity = sizeof...(A);
    static std::string signature() {
        std::string s;
        ((s += param_token<A>() + " "), ...);
        if (!s.empty()) s.pop_back();
        return s;
    }
};

template <auto Kernel> void invoke(void** args) {
    call_unpacked(Kernel, args, std::make_index_sequence<KernelTraits<decltype(Kernel)>::arity>{});
}

template <auto Kernel> struct Registrar {
    explicit Registrar(const char* name) {
        using Traits = KernelTraits<decltype(Kernel)>;
        fl_emu_register(name, &invoke<Kernel>, Traits::arity, Traits::signature().c_str());
    }
};

}  // namespace fl_emu

#define FL_EXPORT(name) static const ::fl_emu::Registrar<&name> fl_emu_registrar_##name(#name);
