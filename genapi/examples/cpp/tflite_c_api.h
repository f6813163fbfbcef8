// The part of the TensorFlow Lite C API that text_generator_main.cc calls, as a table of
// function pointers filled from liblitert-lm.so.
//
// No installable package ships the TFLite C headers, but `liblitert-lm.so` from the
// `litert-lm-api` wheel exports the whole C API. The declarations follow the stable C API
// (tensorflow/lite/core/c/c_api.h and c_api_types.h): objects stay opaque, and the enum values
// below are the ones the library uses.
//
// Why a table and not `-llitert-lm`: besides the C API the library exports about 100,000 C++
// symbols of its own statically linked libc++, absl, protobuf and SentencePiece. Linked
// directly, they share one namespace with libstdc++ and Debian's libsentencepiece (hundreds of
// names clash), and the runner aborted at start-up ("free(): invalid pointer" in absl's flag
// registration). Opened with dlopen(RTLD_LOCAL), the library keeps its symbols to itself; its
// only outside dependency is glibc.

#ifndef GENAPI_EXAMPLES_CPP_TFLITE_C_API_H_
#define GENAPI_EXAMPLES_CPP_TFLITE_C_API_H_

#include <cstdarg>
#include <cstddef>
#include <cstdint>

extern "C" {

typedef struct TfLiteModel TfLiteModel;
typedef struct TfLiteInterpreterOptions TfLiteInterpreterOptions;
typedef struct TfLiteInterpreter TfLiteInterpreter;
typedef struct TfLiteSignatureRunner TfLiteSignatureRunner;
typedef struct TfLiteTensor TfLiteTensor;

// Only kTfLiteOk means success; other codes are reported by number.
typedef enum TfLiteStatus { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;

// The element types a genapi model's inputs and outputs use.
typedef enum TfLiteType { kTfLiteNoType = 0, kTfLiteFloat32 = 1, kTfLiteInt32 = 2 } TfLiteType;

typedef void (*TfLiteErrorReporter)(void* user_data, const char* format, va_list args);

typedef struct TfLiteDelegate TfLiteDelegate;

// Options of the XNNPACK delegate (tensorflow/lite/delegates/xnnpack/xnnpack_delegate.h). Every
// version of the library's struct starts with these two fields; what follows them (weight
// caches, file paths) changes between versions. The runner sets only `num_threads`, keeps the
// rest as TfLiteXNNPackDelegateOptionsDefault filled it, and reserves more room than any
// version needs (a struct this large is returned through a caller-provided buffer).
typedef struct TfLiteXNNPackDelegateOptions {
  int32_t num_threads;
  uint32_t flags;
  alignas(8) unsigned char reserved[1024];
} TfLiteXNNPackDelegateOptions;

}  // extern "C"

// X(return type, name, parameters) for every C API function the runner calls.
// Notes: the data passed to TfLiteModelCreate must outlive the model; signature tensors are
// addressed by their signature names; TfLiteTensorCopyFromBuffer requires the size to equal
// TfLiteTensorByteSize.
#define GENAPI_TFLITE_C_API(X)                                                                   \
  /* models */                                                                                   \
  X(TfLiteModel*, TfLiteModelCreate, (const void* model_data, size_t model_size))                \
  X(TfLiteModel*, TfLiteModelCreateFromFile, (const char* model_path))                           \
  X(void, TfLiteModelDelete, (TfLiteModel * model))                                              \
  /* interpreter options */                                                                      \
  X(TfLiteInterpreterOptions*, TfLiteInterpreterOptionsCreate, (void))                           \
  X(void, TfLiteInterpreterOptionsDelete, (TfLiteInterpreterOptions * options))                  \
  X(void, TfLiteInterpreterOptionsSetNumThreads,                                                 \
    (TfLiteInterpreterOptions * options, int32_t num_threads))                                   \
  X(void, TfLiteInterpreterOptionsSetErrorReporter,                                              \
    (TfLiteInterpreterOptions * options, TfLiteErrorReporter reporter, void* user_data))         \
  X(void, TfLiteInterpreterOptionsAddDelegate,                                                   \
    (TfLiteInterpreterOptions * options, TfLiteDelegate * delegate))                             \
  /* the XNNPACK delegate: the interpreter alone runs TFLite's reference kernels */              \
  X(TfLiteXNNPackDelegateOptions, TfLiteXNNPackDelegateOptionsDefault, (void))                   \
  X(TfLiteDelegate*, TfLiteXNNPackDelegateCreate, (const TfLiteXNNPackDelegateOptions* options)) \
  X(void, TfLiteXNNPackDelegateDelete, (TfLiteDelegate * delegate))                              \
  /* interpreter and its signatures */                                                           \
  X(TfLiteInterpreter*, TfLiteInterpreterCreate,                                                 \
    (const TfLiteModel* model, const TfLiteInterpreterOptions* optional_options))                \
  X(void, TfLiteInterpreterDelete, (TfLiteInterpreter * interpreter))                            \
  X(int32_t, TfLiteInterpreterGetSignatureCount, (const TfLiteInterpreter* interpreter))         \
  X(const char*, TfLiteInterpreterGetSignatureKey,                                               \
    (const TfLiteInterpreter* interpreter, int32_t signature_index))                             \
  X(TfLiteSignatureRunner*, TfLiteInterpreterGetSignatureRunner,                                 \
    (const TfLiteInterpreter* interpreter, const char* signature_key))                           \
  /* signature runners */                                                                        \
  X(size_t, TfLiteSignatureRunnerGetInputCount, (const TfLiteSignatureRunner* runner))           \
  X(const char*, TfLiteSignatureRunnerGetInputName,                                              \
    (const TfLiteSignatureRunner* runner, int32_t input_index))                                  \
  X(size_t, TfLiteSignatureRunnerGetOutputCount, (const TfLiteSignatureRunner* runner))          \
  X(const char*, TfLiteSignatureRunnerGetOutputName,                                             \
    (const TfLiteSignatureRunner* runner, int32_t output_index))                                 \
  X(TfLiteStatus, TfLiteSignatureRunnerAllocateTensors, (TfLiteSignatureRunner * runner))        \
  X(TfLiteTensor*, TfLiteSignatureRunnerGetInputTensor,                                          \
    (TfLiteSignatureRunner * runner, const char* input_name))                                    \
  X(const TfLiteTensor*, TfLiteSignatureRunnerGetOutputTensor,                                   \
    (const TfLiteSignatureRunner* runner, const char* output_name))                              \
  X(TfLiteStatus, TfLiteSignatureRunnerInvoke, (TfLiteSignatureRunner * runner))                 \
  X(void, TfLiteSignatureRunnerDelete, (TfLiteSignatureRunner * runner))                         \
  /* tensors */                                                                                  \
  X(TfLiteType, TfLiteTensorType, (const TfLiteTensor* tensor))                                  \
  X(int32_t, TfLiteTensorNumDims, (const TfLiteTensor* tensor))                                  \
  X(int32_t, TfLiteTensorDim, (const TfLiteTensor* tensor, int32_t dim_index))                   \
  X(size_t, TfLiteTensorByteSize, (const TfLiteTensor* tensor))                                  \
  X(void*, TfLiteTensorData, (const TfLiteTensor* tensor))                                       \
  X(TfLiteStatus, TfLiteTensorCopyFromBuffer,                                                    \
    (TfLiteTensor * tensor, const void* input_data, size_t input_data_size))

// The C API functions, filled by LoadTfLiteCApi in text_generator_main.cc.
struct TfLiteCApi {
#define GENAPI_TFLITE_MEMBER(result, name, parameters) result(*name) parameters = nullptr;
  GENAPI_TFLITE_C_API(GENAPI_TFLITE_MEMBER)
#undef GENAPI_TFLITE_MEMBER
};

#endif  // GENAPI_EXAMPLES_CPP_TFLITE_C_API_H_
